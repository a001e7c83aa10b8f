"""The CI recipes of docs/ci.md are real files, and every pvpatch command line in them works.

.github/workflows/pvpatch.yml and ci/gitlab-ci.yml are parsed as YAML; each shell line that
runs pvpatch must name a real command with real options (as its --help lists them), and,
with the kernel replaced by a fixture and outputs by files in tmp_path, must run to exit
status 0 or 1 (never a usage error). The YAML that docs/ci.md shows for them must be the
files themselves, so the recipes and the docs cannot drift apart; the doc's other snippets
(a kernel build's own job, the Makefile hook) are held to the same command-line check.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT, assemble, pvpatch

from pvpatch.cli import COMMANDS, cli

yaml = pytest.importorskip("yaml", reason="PyYAML (in the dev extra) reads the recipes")

GITHUB = ROOT / ".github" / "workflows" / "pvpatch.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
DOC = ROOT / "docs" / "ci.md"


def shell_lines(node: object) -> list[str]:
    """Every shell text in a parsed recipe: GitHub's `run`, GitLab's `script` and friends."""
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "run" and isinstance(value, str):
                out += value.splitlines()
            elif key in ("script", "before_script", "after_script"):
                out += [v for v in (value if isinstance(value, list) else [value])
                        if isinstance(v, str)]
            else:
                out += shell_lines(value)
    elif isinstance(node, list):
        for item in node:
            out += shell_lines(item)
    return out


def invocations(lines: list[str]) -> list[list[str]]:
    """The argument lists of every pvpatch run in ``lines``: each simple command (split at
    the shell's operators) whose program is ``pvpatch`` or ends in ``/pvpatch``. GitHub's
    ``${{ }}`` expressions become one word."""
    out = []
    for line in lines:
        lexer = shlex.shlex(re.sub(r"\$\{\{[^}]*\}\}", "X", line), posix=True,
                            punctuation_chars=True)
        lexer.wordchars += ",:@%+$"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("();<>|&"):
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)  # VAR=value before the program
                if words and Path(words[0]).name == "pvpatch" and len(words) > 1:
                    out.append(words[1:])
                words = []
            else:
                words.append(token)
    return out


def command(name: str) -> click.Command:
    ctx = click.Context(cli)
    found = cli.get_command(ctx, name)
    assert found is not None, f"pvpatch has no command {name!r} (it has {', '.join(COMMANDS)})"
    return found


def options_of(cmd: click.Command) -> dict[str, click.Option]:
    return {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts}


def check_line(args: list[str]) -> None:
    """A real command, whose every option its --help lists, each followed by a value when
    it takes one."""
    name, rest = args[0], args[1:]
    cmd = command(name)
    helptext = CliRunner().invoke(cli, [name, "--help"]).output
    known = options_of(cmd)
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-"):
            opt = word.split("=", 1)[0]
            assert opt in known and opt in helptext, f"pvpatch {name} has no option {opt}"
            if not known[opt].is_flag and "=" not in word:
                assert i + 1 < len(rest), f"{opt} needs a value"
                i += 1
        i += 1


def substituted(args: list[str], kernel: str, tmp: Path, baseline: Path) -> list[str]:
    """The line with its kernel a fixture, its outputs in ``tmp``, its baseline a report."""
    cmd = command(args[0])
    known = options_of(cmd)
    out, i = [args[0]], 1
    while i < len(args):
        word = args[i]
        if word.startswith("-") and not known[word.split("=", 1)[0]].is_flag:
            value = args[i + 1]
            if word in ("-o", "--output", "--report"):
                value = str(tmp / Path(value).name)
            elif word == "--baseline":
                value = str(baseline)
            out += [word, value]
            i += 2
            continue
        out.append(word if word.startswith("-") else kernel)
        i += 1
    return out


def recipes() -> dict[str, object]:
    return {p.name: yaml.safe_load(p.read_text()) for p in (GITHUB, GITLAB)}


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_both_recipes_exist_and_parse():
    github, gitlab = yaml.safe_load(GITHUB.read_text()), yaml.safe_load(GITLAB.read_text())
    assert github["jobs"]["check"]["steps"] and True in github  # PyYAML reads `on:` as True
    assert gitlab["pvpatch-check"]["script"]
    for doc in (github, gitlab):
        assert invocations(shell_lines(doc)), "a recipe that never runs pvpatch"


def test_the_docs_show_the_files_themselves():
    shown = [yaml.safe_load(b) for b in doc_blocks("yaml")]
    for name, doc in recipes().items():
        assert doc in shown, f"docs/ci.md does not show {name} as it is"


def _all_lines() -> list[list[str]]:
    lines = [a for doc in recipes().values() for a in invocations(shell_lines(doc))]
    lines += [a for b in doc_blocks("yaml") for a in invocations(shell_lines(yaml.safe_load(b)))]
    lines += [a for b in doc_blocks("make") for a in invocations(b.replace("$<", "vmlinux")
                                                                  .splitlines())]
    return lines


def test_every_pvpatch_line_is_a_real_command_with_real_options():
    lines = _all_lines()
    assert len(lines) >= 4
    for args in lines:
        check_line(args)


def test_every_pvpatch_line_runs_on_a_fixture(tmp_path):
    kernel = str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1}))
    baseline = tmp_path / "baseline.json"
    r = pvpatch("check", kernel, "--json")
    baseline.write_text(r.stdout)
    assert json.loads(r.stdout)["schema"] == "pvpatch.check/1"
    for args in _all_lines():
        r = pvpatch(*substituted(args, kernel, tmp_path, baseline))
        assert r.returncode in (0, 1), (args, r.stderr)


def test_the_scripts_they_call_exist():
    for doc in recipes().values():
        for line in shell_lines(doc):
            for script in re.findall(r"scripts/[\w.-]+", line):
                assert (ROOT / script).is_file(), script


def test_the_line_check_catches_what_it_is_for():
    """A self-test: an unknown command, an unknown option and a missing value all fail."""
    for bad in (["chekc", "vmlinux"], ["check", "vmlinux", "--formta", "junit"],
                ["check", "vmlinux", "-o"]):
        with pytest.raises(AssertionError):
            check_line(bad)
    check_line(["check", "vmlinux", "--format", "junit", "-o", "x.xml"])

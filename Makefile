# pvpatch — everything a new machine needs goes through these targets.
#   make demo    set up, fetch the current Debian cloud debug kernel, run the main commands on it
#   make test    set up, fetch the real kernels (skipped loudly if unreachable), run the tests
#   make lint    ruff
#   make bench   timings and peak memory against reference tools, in one run

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PVPATCH := $(VENV)/bin/pvpatch
CACHE   ?= $(HOME)/.cache/pvpatch
export PVPATCH_CACHE := $(CACHE)

.PHONY: setup demo test test-fast lint bench fetch fuzz clean boot-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Byte-compile the package: where PYTHONDONTWRITEBYTECODE is set (many CI images, this one)
# every run would otherwise recompile ~40 modules, a tenth of a second of each command.
setup: $(VENV)/.installed
	@$(PY) -m compileall -q src > /dev/null

# Fetch Debian's debug kernels into $(CACHE) (outside git), each with its bootable vmlinuz
# (tests/test_real_vmlinuz.py and test_real_i386.py compare the two): bookworm's (with its
# security updates) 6.1 and 6.12, cloud and generic, and 6.1's 32-bit 686-pae; bullseye's 5.10
# and trixie-backports' 7.x, generic. scripts/fetch-kernel.sh resolves each suite's newest
# release and downloads only what is not cached (README.md: what and how much). Exit 3 (Debian's
# registry unreachable, no such package) is not fatal here: the real-kernel tests then skip.
FETCH_KERNELS ?= cloud-amd64 amd64 6.12-cloud-amd64 6.12-amd64 686-pae bullseye:amd64 \
                 trixie-backports:amd64
fetch:
	@for f in $(FETCH_KERNELS); do \
	    scripts/fetch-kernel.sh $$f --with-vmlinuz; rc=$$?; \
	    if [ $$rc = 3 ]; then echo "make fetch: SKIPPED $$f: Debian's registry unreachable or no such package (see above); its real-kernel tests will skip" >&2; \
	    elif [ $$rc != 0 ]; then echo "make fetch: could not fetch the $$f kernel (exit $$rc, see above); its real-kernel tests will skip" >&2; fi; \
	done

demo: setup
	@k=$$(scripts/fetch-kernel.sh cloud-amd64) && mkdir -p $(CACHE)/demo && \
	    echo "== pvpatch inspect $$k" && $(PVPATCH) inspect $$k && \
	    echo && echo "== pvpatch inspect --sites --op 'irq.*' (first lines)" && \
	    ($(PVPATCH) inspect $$k --sites --op 'irq.*' | sed -n '/^address/,$$p' | head -n 8) && \
	    echo && echo "== pvpatch notes --check" && $(PVPATCH) notes $$k --check && \
	    echo && echo "== pvpatch apply --backend xen --vcpus 2 (the kernel as a Xen PV guest patches itself)" && \
	    $(PVPATCH) apply $$k -o $(CACHE)/demo/vmlinux.xen --backend xen --vcpus 2 | head -n 12 && \
	    echo && echo "== pvpatch diff: a few sites before → after" && \
	    ($(PVPATCH) diff $$k $(CACHE)/demo/vmlinux.xen --sites --changed | sed -n '/^address/,$$p' | head -n 8)

test: setup fetch
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -rs -m "not realkernel"

lint: setup
	$(VENV)/bin/ruff check src tests scripts

# The generic kernels of three generations: bookworm's 6.1 (the 600 MB image the targets name),
# bullseye's 5.10 (7567 sites of the 2.6.30–5.17 call form) and trixie-backports' 7.3.
BENCH_KERNELS ?= amd64 bullseye:amd64 trixie-backports:amd64
bench: setup
	@status=0; for f in $(BENCH_KERNELS); do \
	    k=$$(scripts/fetch-kernel.sh $$f --with-vmlinuz) || exit 2; \
	    $(PY) scripts/bench.py $$k || status=1; echo; \
	done; exit $$status

# Boot the generic kernel natively and as a Xen PV dom0 (1 and 2 vCPUs), and the cloud kernel
# natively, under QEMU; dump the .text each patched itself into and compare `pvpatch apply`
# with it site by site (docs/boot-test.md). Installs qemu-system-x86 and the Xen hypervisor
# if missing. Dumps are cached per kernel release: BOOT_TEST_ARGS=--refresh reboots.
boot-test: setup
	$(PY) scripts/boottest/run.py --pvpatch $(PVPATCH) $(BOOT_TEST_ARGS)

# The long fuzz run: 100,000 mutants through every command (make test runs a short one).
FUZZ_MUTANTS ?= 100000
fuzz: setup
	$(PY) scripts/fuzz.py --mutants $(FUZZ_MUTANTS)

clean:
	rm -rf $(VENV) fixtures/build .pytest_cache *.egg-info

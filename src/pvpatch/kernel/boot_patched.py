"""Sites that already hold what boot patching leaves: is this image patched?

The build emits every pv site as an indirect call (or jump) through the op table. After
``apply_paravirt``/``apply_alternatives`` — at boot, or offline by ``pvpatch apply`` — a site
holds a direct call and NOPs, only NOPs, or the inline native instructions: whole
instructions of exactly the site's length, in code, with no indirect branch. One such site in
a pristine image is a defect (``site.not-indirect-call``); most of them mean the image was
patched, which is a fact about the whole image, reported once (``pvpatch.patch.recognise``
names the configuration it matches). Telling the two apart needs nothing but the bytes
every site was decoded from, so a pristine image pays one pass over its sites.
"""

from __future__ import annotations

from dataclasses import dataclass

# "Most sites": more than half hold a patched form. A pristine image has none or a few
# (corrupt records, hand-written asm); a patched one all, but those a backend leaves alone.
PATCHED_SHARE = 0.5

INDIRECT, PATCHED, BAD = "indirect", "patched", "bad"  # Site.form


@dataclass(frozen=True)
class PatchedLook:
    """The sites' shapes when most are in a patched form."""

    sites: int
    patched_form: int  # sites holding a direct call, NOPs or inline code

    @property
    def described(self) -> str:
        return (f"{self.patched_form} of {self.sites} sites hold what boot patching leaves, "
                "not the indirect call the build emits")


def looks_patched(forms: list[str]) -> PatchedLook | None:
    """A :class:`PatchedLook` when most sites are in a patched form, else None."""
    n = forms.count(PATCHED)
    if not forms or n <= PATCHED_SHARE * len(forms):
        return None
    return PatchedLook(len(forms), n)

"""``pvpatch verify``: does a running or crashed kernel hold, at every pv site, what it should?

The pieces, in the order a verification (``run.verify``) uses them:

- ``place``: where the kernel sits in the memory image (``image.memory``) — its KASLR slide and
  the .text bytes as memory holds them — from VMCOREINFO where the image has it, else found by
  content (``locate``: sampled pages at every KASLR step, or page by page in machine memory
  with no order at all); and whether it is this build at all (build-id, release, banner,
  content; ``check_text`` for every byte of .text outside the patch tables);
- ``configs``: every boot configuration the image supports (backend, vCPUs, and before 5.13
  the CPU classes whose NOP tables differ), each planned as ``apply`` plans it;
- ``relocate``: the slide applied to the operands a plan leaves as built;
- ``compare``: each configuration against memory at every .text pv site, pv static-call site
  and trampoline; the one that matches most is the verdict.

Everything here reads; nothing writes. ``render.verify`` describes the result.
"""

"""``pvpatch verify``: does a running or crashed kernel hold, at every pv site, what it should?

The pieces, in the order a verification runs them:

- ``place``: where the kernel sits in the memory image (``image.memory``) — its KASLR slide and
  the .text bytes as memory holds them — read from VMCOREINFO where the image has it, else found
  by content (``locate`` for machine memory with no order at all); and whether it is this
  build at all;
- ``relocate``: the slide applied to the absolute operands of expected bytes;
- ``configs``: every boot configuration the image supports (backend, vCPUs, the CPU classes
  whose NOP tables differ before 5.13), each planned as ``apply`` plans it;
- ``compare``: each configuration's bytes against memory at every .text pv site, pv
  static-call site and trampoline; the one that matches most is the verdict.

Everything here reads; nothing writes. Renderers (``render.verify``) describe the result.
"""

"""The native backend: bare metal, where pv_ops and the pv static calls keep the values their
initialisers give them (no hypervisor calls static_call_update() on them)."""

from __future__ import annotations

from pvpatch.backends import Backend, decide_pv_features, initial_resolutions, initial_static_calls
from pvpatch.kernel.model import KernelModel


def resolve(model: KernelModel) -> Backend:
    slots = initial_resolutions(model, "pv_ops initialiser")
    backend = Backend("native", "bare metal: the image's pv_ops initialiser", slots,
                      static_calls=initial_static_calls(model, "DEFINE_STATIC_CALL initialiser"))
    decide_pv_features(model, backend, xenpv=False)
    return backend

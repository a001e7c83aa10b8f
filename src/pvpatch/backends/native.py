"""The native backend: bare metal, where pv_ops keeps the values its initialiser gives it."""

from __future__ import annotations

from pvpatch.backends import Backend, decide_pv_features, initial_resolutions
from pvpatch.kernel.model import KernelModel


def resolve(model: KernelModel) -> Backend:
    slots = initial_resolutions(model, "pv_ops initialiser")
    backend = Backend("native", "bare metal: the image's pv_ops initialiser", slots)
    decide_pv_features(model, backend, xenpv=False)
    return backend

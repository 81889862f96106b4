"""The hardware-backend contract: where tensors live and how to time and seed them there.

A backend answers whether it can run here and why not, and hides the device-specific calls
(autocast, synchronise, memory statistics, seeding) so that the engine is written once.
"""

from __future__ import annotations

import contextlib
import random
from abc import ABC, abstractmethod
import torch


class Backend(ABC):
    """One kind of accelerator. ``priority`` orders the choice of ``backend: auto``."""

    name: str = ""
    priority: int = 0

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, a reason a person can act on)."""

    @abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors go to."""

    def activate(self, parameters: int | None = None) -> None:
        """Prepare this process to compute here: at the start of a run, and again with the number of
        ``parameters`` of the model once it is loaded (a backend may size its threads by it)."""

    def is_available(self) -> bool:
        """``availability()[0]``."""
        return self.availability()[0]

    def preferred_dtype(self) -> torch.dtype:
        """bf16 where the hardware runs it natively, else fp32."""
        return torch.float32

    def autocast(self, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
        """Mixed precision on this device; a no-op where ``dtype`` is fp32 or None."""
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device().type, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued kernels, so that wall-clock timings are honest."""

    def memory_stats(self) -> dict[str, int]:
        """Bytes allocated and peak on the device; empty where the device does not say."""
        return {}

    def seed(self, seed: int) -> None:
        """Seed Python, torch and this device's generators."""
        random.seed(seed)
        torch.manual_seed(seed)

    def describe(self) -> str:
        """One line for people: "cuda: available on cuda:0" or "mps: unavailable: <why>"."""
        ok, why = self.availability()
        return f"{self.name}: {'available on ' + str(self.device()) if ok else 'unavailable: ' + why}"



def resolve_backend(name: str, backends) -> Backend:
    """The backend called ``name``, or for ``"auto"`` the available one of highest priority.

    ``backends`` is the plugins' BackendRegistry. Asking for one that cannot run here raises an
    error that says why and lists those that can.
    """
    from ldreg.errors import BackendUnavailable

    registered = [backends.get(n) for n in backends.names()]  # type: ignore[attr-defined]
    available = [b for b in registered if b.is_available()]
    if name == "auto":
        return max(available, key=lambda b: b.priority)
    backend = backends.get(name)  # type: ignore[attr-defined]
    ok, why = backend.availability()
    if not ok:
        raise BackendUnavailable(
            f"backend {name!r} is not available: {why}; available here: "
            f"{', '.join(b.name for b in available)} (or use backend: auto)"
        )
    return backend

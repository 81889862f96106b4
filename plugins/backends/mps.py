"""Apple's Metal Performance Shaders."""

import random

import torch

from ldreg.backends import Backend


class MPSBackend(Backend):
    name = "mps"
    priority = 10

    def availability(self) -> tuple[bool, str]:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            return False, "this torch build has no MPS support (MPS needs macOS on Apple silicon)"
        if not mps.is_available():
            return False, "torch is built with MPS but no MPS device is available (needs macOS 12.3+)"
        return True, ""

    def device(self) -> torch.device:
        return torch.device("mps")

    def preferred_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.is_available() else torch.float32

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def memory_stats(self) -> dict[str, int]:
        return {"allocated_bytes": torch.mps.current_allocated_memory(),
                "driver_allocated_bytes": torch.mps.driver_allocated_memory()}

    def seed(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        torch.mps.manual_seed(seed)

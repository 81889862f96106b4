"""The CPU: always there, fp32, the fallback of ``backend: auto``."""

import torch

from ldreg.backends import Backend


class CPUBackend(Backend):
    name = "cpu"
    priority = 0

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def device(self) -> torch.device:
        return torch.device("cpu")

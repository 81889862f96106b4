"""The CPU: always there, fp32, the fallback of ``backend: auto``."""

import os

import torch

from ldreg.backends import Backend

ENV_THREADS = "LDREG_CPU_THREADS"


def default_threads() -> int:
    """Half the cores: measured here (2 cores), OpenMP's second thread made small matmuls 4-6x
    slower whenever anything else (the database, the store's writer) used the other core."""
    return int(os.environ.get(ENV_THREADS) or max(1, (os.cpu_count() or 2) // 2))


class CPUBackend(Backend):
    name = "cpu"
    priority = 0

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def device(self) -> torch.device:
        return torch.device("cpu")

    def activate(self) -> None:
        torch.set_num_threads(default_threads())

"""The CPU: always there, fp32, the fallback of ``backend: auto``."""

import os

import torch

from ldreg.backends import Backend

ENV_THREADS = "LDREG_CPU_THREADS"


# Above this many parameters a model's matmuls are large enough for every core to pay: measured on
# 2 cores, SmolLM2-135M ran a forward pass 1.64x and a forward+backward 1.77x faster on 2 threads.
LARGE_MODEL = 20_000_000


def default_threads(parameters: int | None = None) -> int:
    """Half the cores for small models: measured here (2 cores), OpenMP's second thread made small
    matmuls 4-6x slower whenever anything else (the database, the store's writer) used the other
    core. Every core for a large model. LDREG_CPU_THREADS overrides both."""
    cores = os.cpu_count() or 2
    if os.environ.get(ENV_THREADS):
        return int(os.environ[ENV_THREADS])
    return cores if parameters is not None and parameters >= LARGE_MODEL else max(1, cores // 2)


class CPUBackend(Backend):
    name = "cpu"
    priority = 0

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def device(self) -> torch.device:
        return torch.device("cpu")

    def activate(self, parameters: int | None = None) -> None:
        torch.set_num_threads(default_threads(parameters))

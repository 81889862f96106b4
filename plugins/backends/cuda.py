"""NVIDIA CUDA and AMD ROCm: both appear to torch as ``torch.cuda``; ``torch.version`` tells them apart."""

import random

import torch

from ldreg.backends import Backend


class _TorchCudaBackend(Backend):
    """Shared by CUDA and ROCm builds, which both expose devices through ``torch.cuda``."""

    build_flag = ""  # the attribute of torch.version that names this build

    def availability(self) -> tuple[bool, str]:
        if getattr(torch.version, self.build_flag, None) is None:
            return False, (f"torch {torch.__version__} is not a {self.name} build "
                           f"(torch.version.{self.build_flag} is None)")
        if not torch.cuda.is_available():
            return False, f"torch is built for {self.name} but sees no device (check drivers and visible devices)"
        return True, ""

    def device(self) -> torch.device:
        return torch.device("cuda")

    def preferred_dtype(self) -> torch.dtype:
        if self.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def memory_stats(self) -> dict[str, int]:
        return {"allocated_bytes": torch.cuda.memory_allocated(),
                "peak_allocated_bytes": torch.cuda.max_memory_allocated()}

    def seed(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)


class CUDABackend(_TorchCudaBackend):
    name = "cuda"
    priority = 30
    build_flag = "cuda"


class ROCmBackend(_TorchCudaBackend):
    name = "rocm"
    priority = 20
    build_flag = "hip"

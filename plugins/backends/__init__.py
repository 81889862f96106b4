"""Built-in hardware backends: cpu, cuda, rocm, mps."""

from ldreg.hookspecs import hookimpl

from .cpu import CPUBackend
from .cuda import CUDABackend, ROCmBackend
from .mps import MPSBackend


@hookimpl
def ldreg_register_backends(registry):
    for backend in (CPUBackend(), CUDABackend(), ROCmBackend(), MPSBackend()):
        registry.add(backend)

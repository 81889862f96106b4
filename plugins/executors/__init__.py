"""Built-in sweep executors: local processes, Ray tasks, Slurm job arrays (submitit)."""

from ldreg.hookspecs import hookimpl

from .local import LocalExecutor
from .ray_tasks import RayExecutor
from .slurm import SlurmExecutor


@hookimpl
def ldreg_register_executors(registry):
    for executor in (LocalExecutor(), RayExecutor(), SlurmExecutor()):
        registry.add(executor)

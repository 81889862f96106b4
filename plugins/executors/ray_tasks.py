"""``ray``: one Ray task per waiting config, on a local Ray instance or a cluster (``address=``)."""

from __future__ import annotations

import os

from ldreg.errors import LdregError
from ldreg.sweep.executor import Executor, SweepJob, option, require


def _task(sweep_id: str, env: dict[str, str]) -> int:
    from ldreg.sweep.worker import run_in_env

    return run_in_env(sweep_id, env, max_configs=1)


class RayExecutor(Executor):
    name = "ray"
    description = "Ray tasks, one per config; address=HOST:PORT joins a cluster (needs ldreg[ray])"
    options = {"address": "join this Ray cluster (default: start a local Ray instance)",
               "workers": "CPUs of a local Ray instance (default: all)",
               "cpus_per_task": "CPUs each task reserves (default 1)",
               "gpus_per_task": "GPUs each task reserves (default 0)"}

    def remote(self, options) -> bool:
        return bool(options.get("address"))

    def launch(self, job: SweepJob) -> None:
        ray = require("ray", "ray", self.name)
        address = option(job.options, "address", None, str, self.name)
        started = not ray.is_initialized()
        if started:
            os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # a loaded machine starts Ray slowly
            try:
                ray.init(address=address, num_cpus=None if address else option(job.options, "workers", None, int,
                                                                                 self.name),
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions on a failed start
                raise LdregError(f"executor 'ray': Ray did not start ({' '.join(str(exc).split())[:200]}); "
                                 f"on a busy machine its 30 s start-up limit can pass: retry, or use "
                                 f"--executor local") from None
        try:
            task = ray.remote(num_cpus=option(job.options, "cpus_per_task", 1, float, self.name),
                              num_gpus=option(job.options, "gpus_per_task", 0, float, self.name), max_retries=0)(_task)
            refs = [task.remote(job.sweep_id, job.env) for _ in range(job.pending)]
            waiting = list(refs)
            while waiting:
                _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
                job.poll()
            ray.get(refs)
        finally:
            if started:
                ray.shutdown()

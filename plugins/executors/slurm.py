"""``slurm``: a Slurm job array through submitit, one job per waiting config (``cluster=local`` runs
the same jobs through submitit's local executor, without Slurm)."""

from __future__ import annotations

import time

from ldreg.sweep.executor import Executor, SweepJob, option, require


def _job(sweep_id: str, env: dict[str, str]) -> int:
    from ldreg.sweep.worker import run_in_env

    return run_in_env(sweep_id, env, max_configs=1)


class SlurmExecutor(Executor):
    name = "slurm"
    description = "a Slurm job array through submitit, one job per config (needs ldreg[slurm])"
    options = {"partition": "the Slurm partition", "time": "minutes each job may run (default 60)",
               "gpus": "GPUs per job (default 0)", "cpus": "CPUs per job (default 2)",
               "mem_gb": "memory per job in GB (default 8)", "parallel": "jobs of the array running at once",
               "cluster": "slurm (default), or local: submitit's local executor on this machine",
               "folder": "where submitit keeps its logs (default: the sweep's log folder)"}

    def remote(self, options) -> bool:
        return options.get("cluster", "slurm") != "local"

    def launch(self, job: SweepJob) -> None:
        submitit = require("submitit", "slurm", self.name)
        cluster = option(job.options, "cluster", "slurm", str, self.name)
        folder = option(job.options, "folder", str(job.log_dir / "submitit"), str, self.name)
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params = {"timeout_min": option(job.options, "time", 60, int, self.name),
                  "gpus_per_node": option(job.options, "gpus", 0, int, self.name),
                  "cpus_per_task": option(job.options, "cpus", 2, int, self.name),
                  "mem_gb": option(job.options, "mem_gb", 8, float, self.name), "name": f"ldreg-{job.sweep_id}"}
        if cluster != "local":
            if job.options.get("partition"):
                params["slurm_partition"] = str(job.options["partition"])
            if job.options.get("parallel"):
                params["slurm_array_parallelism"] = option(job.options, "parallel", 1, int, self.name)
        executor.update_parameters(**params)
        jobs = executor.map_array(_job, [job.sweep_id] * job.pending, [job.env] * job.pending)
        while not all(j.done() for j in jobs):
            job.poll()
            time.sleep(1.0)
        job.poll()
        for j in jobs:
            j.result()  # a job that crashed outside the worker (Slurm killed it) says so here

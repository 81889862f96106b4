"""``local``: N worker processes on this machine, dividing its cores so their threads do not fight."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ldreg.sweep.executor import Executor, SweepJob, option


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class LocalExecutor(Executor):
    name = "local"
    description = "worker processes on this machine (default: one per 2 cores, at least 1)"
    options = {"workers": "how many worker processes (default: cores // 2, at least 1)",
               "threads": "CPU threads per worker (default: cores // workers)"}

    def launch(self, job: SweepJob) -> None:
        n = max(1, min(option(job.options, "workers", max(1, cores() // 2), int, self.name), max(job.pending, 1)))
        threads = option(job.options, "threads", max(1, cores() // n), int, self.name)
        env = {**os.environ, **job.env, "LDREG_CPU_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        job.log_dir.mkdir(parents=True, exist_ok=True)
        procs = []
        try:
            for i in range(n):
                log = open(job.log_dir / f"worker-{i}.log", "ab")
                procs.append((subprocess.Popen([sys.executable, "-m", "ldreg.sweep.worker", job.sweep_id],
                                               env=env, stdout=log, stderr=subprocess.STDOUT), log))
            while any(p.poll() is None for p, _ in procs):
                job.poll()
                time.sleep(0.5)
            job.poll()
        finally:
            for p, log in procs:
                if p.poll() is None:  # Ctrl-C: the workers stop too; their configs resume next time
                    p.terminate()
                    p.wait(timeout=30)
                log.close()

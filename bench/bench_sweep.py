"""A 4-config quick sweep: the local executor with 2 workers against the same configs in sequence,
and Ray's per-task overhead against the local executor.

Everything runs against a fresh embedded server and LDREG_HOME in a temp directory. The configs
are experiments/smoke.yaml over seed x learning rate (4 configs, 1 epoch each); the tiny models are
built once before timing, so every timed mode starts from the same cache.

(a) sequential: one worker process runs the 4 configs one after another (the baseline);
(b) local, 2 workers: 2 processes, 1 thread each, claiming configs from the database;
    the ratio (a)/(b) is the speed-up; on 2 cores it is bounded by the per-process start-up
    (importing torch and transformers) and by the embedded server sharing those cores;
(c) ray, 2 CPUs: a local Ray instance, one task per config (``--no-ray`` leaves it out); the
    difference (c) - (b) over 4 tasks is Ray's per-task overhead against local processes,
    including starting Ray itself.

    python -m bench.bench_sweep            # run it only on a calm machine: every mode is wall time
    python -m bench.bench_sweep --no-ray
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
QUICK = ["stages.0.epochs=1", "probing.influence=null", "probing.entk=null"]


def _sweep(label: str):
    from ldreg.sweep.definition import build

    # a unique name per mode: each timed sweep is new, never a resumed one
    return build(SMOKE, axes={"seed": [1, 2], "stages.0.lr": [1e-3, 2e-3]}, overrides=QUICK,
                 name=f"bench-{label}-{uuid.uuid4().hex[:6]}")


def _timed(label: str, executor: str, options: dict) -> float:
    from ldreg.sweep.launch import run_sweep

    sweep = _sweep(label)
    start = time.perf_counter()
    outcome = run_sweep(sweep, executor=executor, options=options, progress=False)
    seconds = time.perf_counter() - start
    if not outcome.complete:
        raise SystemExit(f"{label}: not every config completed: {outcome.counts}")
    print(f"{label:<22} {seconds:7.1f} s  ({outcome.counts['completed']} configs)", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray measurement")
    parser.add_argument("--quick", action="store_true", help="accepted for `python -m bench --quick`; same run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        os.environ["LDREG_HOME"] = tmp
        os.environ.pop("LDREG_MONGO_URL", None)
        os.environ["LDREG_DB"] = "bench_sweep"
        os.environ.setdefault("LDREG_HEARTBEAT_S", "2")
        from ldreg.store import server

        try:
            # warm the caches (tiny models, probing sets) so no timed mode pays for building them
            _timed("warm-up (not timed)", "local", {"workers": 1})
            sequential = _timed("sequential (1 worker)", "local", {"workers": 1, "threads": 1})
            parallel = _timed("local, 2 workers", "local", {"workers": 2, "threads": 1})
            print(f"speed-up of 2 workers over sequential: {sequential / parallel:.2f}x on {os.cpu_count()} cores")
            if not args.no_ray:
                ray_s = _timed("ray, 2 CPUs", "ray", {"workers": 2})
                print(f"ray over local (2 workers): {ray_s - parallel:+.1f} s for 4 tasks, "
                      f"{(ray_s - parallel) / 4:+.1f} s a task (including Ray's start)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

"""A sweep worker: claim a config, run it as an ordinary tracked run, record the outcome, repeat.

Every executor ends up here (a local process, a Ray task, a Slurm array job), so a config runs the
same way whatever runs it. A config whose earlier run exists (a dead worker's, or a FAILED one) is
resumed from that run's checkpoint; without one, the dead run is marked FAILED and the config runs
afresh. So each config ends with exactly one COMPLETED run.

    python -m ldreg.sweep.worker SWEEP_ID [--max-configs N]
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from ldreg.sweep import store

log = logging.getLogger("ldreg.sweep")

LEASE_BEATS = 4  # a claim outlives its last renewal by 4 heartbeats: one more than a run takes to read DEAD


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Renews a claim every heartbeat in a background thread while its config runs."""

    def __init__(self, db, entry: dict[str, Any], beat_s: float):
        self.db, self.entry, self.beat_s = db, entry, beat_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ldreg-sweep-lease", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                if not store.renew(self.db, self.entry, LEASE_BEATS * self.beat_s):
                    self.lost = True
                    log.warning("sweep config %s was taken over by another worker", self.entry["_id"])
                    return
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried next beat
                log.warning("sweep lease not renewed (%s)", type(exc).__name__)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def _wait_until_not_live(db, run_id: int, beat_s: float) -> dict[str, Any]:
    """A taken-over config's run reads DEAD a beat or so after its lease ran out: wait for that."""
    from ldreg.store.runs import get_run, is_dead

    deadline = time.monotonic() + 2 * LEASE_BEATS * max(beat_s, 0.05) + 10
    while True:
        doc = get_run(run_id, db)
        if doc.get("status") != "RUNNING" or is_dead(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(min(beat_s, 1.0))


def run_config(db, sweep_doc: dict[str, Any], entry: dict[str, Any], plugins, beat_s: float,
               progress: bool = False) -> int:
    """Run (or resume, or adopt) one claimed config; returns its COMPLETED run id."""
    from ldreg import checkpoint
    from ldreg import spec as specs
    from ldreg.runner import resume_experiment, run_experiment
    from ldreg.spec import apply_overrides
    from ldreg.store.runs import mark_failed

    sweep_id, index = sweep_doc["_id"], entry["index"]
    earlier = store.runs_of(db, sweep_id).get(index, [])
    if earlier:
        last = _wait_until_not_live(db, earlier[-1]["_id"], beat_s)
        if last.get("status") == "COMPLETED":  # its worker died after the run ended, before recording it
            return last["_id"]
        if last.get("status") == "RUNNING" and not checkpoint.exists(last["_id"]):
            mark_failed(last["_id"], db)  # raises if it still beats: then two workers would write one run
        elif checkpoint.exists(last["_id"]):
            store.record_run(db, entry, last["_id"])
            return resume_experiment(last["_id"], progress=progress, plugins=plugins).run_id
    spec = specs.parse(apply_overrides(sweep_doc["base"], entry["overrides"]), plugins)
    spec.tags = list(dict.fromkeys([*spec.tags, store.run_tag(sweep_id), store.run_tag(sweep_id, index)]))
    return run_experiment(spec, spec_path=sweep_doc.get("source") or None, progress=progress, plugins=plugins).run_id


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def work(sweep_id: str, *, max_configs: int | None = None, name: str | None = None, progress: bool = False) -> int:
    """Claim and run configs of ``sweep_id`` until none is left to claim or held by a live worker (or
    ``max_configs`` ran); returns how many ran here."""
    from ldreg.registry import get_plugins
    from ldreg.store.connection import connect
    from ldreg.tracking import heartbeat_s

    db = connect()
    sweep_doc = store.get(db, sweep_id)
    beat = heartbeat_s()
    plugins = get_plugins()
    name = name or worker_name()
    done = 0
    while max_configs is None or done < max_configs:
        entry = store.claim(db, sweep_id, name, LEASE_BEATS * beat)
        if entry is None:
            if not store.counts(store.entries(db, sweep_id))["running"]:
                break
            # others hold configs: stay until they finish or their claims expire (a dead worker's
            # config is then taken over here, so no config is left behind when every worker exits)
            time.sleep(beat)
            continue
        with LeaseKeeper(db, entry, beat):
            try:
                run_id = run_config(db, sweep_doc, entry, plugins, beat, progress)
            except KeyboardInterrupt:
                store.finish(db, entry, "failed", None, "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - recorded on the config; the next config still runs
                found = store.runs_of(db, sweep_id).get(entry["index"], [])
                store.finish(db, entry, "failed", found[-1]["_id"] if found else None, _one_line(exc))
                log.warning("sweep %s config %s failed: %s", sweep_id, entry["index"], _one_line(exc))
            else:
                store.finish(db, entry, "completed", run_id)
        done += 1
    return done


def run_in_env(sweep_id: str, env: dict[str, str], max_configs: int | None = None) -> int:
    """Entry point for remote executors (Ray tasks, Slurm jobs): adopt the launcher's ldreg settings first."""
    os.environ.update(env)
    from ldreg.store import connection

    connection.disconnect()  # a reused process (a Ray worker) may hold a connection to another database
    return work(sweep_id, max_configs=max_configs)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ldreg.sweep.worker", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_id")
    parser.add_argument("--max-configs", type=int, default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from ldreg.errors import LdregError

    try:
        work(args.sweep_id, max_configs=args.max_configs, name=args.name)
    except LdregError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

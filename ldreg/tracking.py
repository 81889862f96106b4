"""Sacred runs: every ldreg experiment is a Sacred run recorded by a MongoObserver.

The run documents stay in Sacred's own format (config, host, sources, status, captured output,
heartbeat, result, metrics) so that Omniboard and incense read them unchanged. Per-example
observations do not go through ``log_scalar``: they go to ldreg's bucketed collection, linked by
the Sacred run id.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

with warnings.catch_warnings():  # Sacred 0.8.7 imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    from sacred import Experiment
    from sacred.metrics_logger import linearize_metrics
    from sacred.observers import MongoObserver
    from sacred.observers.mongo import force_bson_encodeable
    from sacred.settings import SETTINGS
    from sacred.utils import apply_backspaces_and_linefeeds

from bson.errors import InvalidDocument
from pymongo import WriteConcern
from pymongo.errors import PyMongoError

from ldreg import config
from ldreg.errors import DatabaseError, LdregError

SETTINGS.CAPTURE_MODE = "sys"  # "fd" breaks under pytest's capture and loses tqdm's carriage returns
SETTINGS.DISCOVER_SOURCES = "imported"

RUNS_COLLECTION = "runs"  # Sacred's default, what Omniboard reads
HEARTBEAT_ENV = "LDREG_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0  # Sacred's default
DB_TIMEOUT_S = 3.0  # Sacred's own client: one server selection, not pymongo's 30 s

log = logging.getLogger("ldreg.tracking")


def heartbeat_s() -> float:
    """Seconds between heartbeats (LDREG_HEARTBEAT_S); a run silent for 3 of them shows as DEAD."""
    raw = os.environ.get(HEARTBEAT_ENV)
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0.05 <= value <= 3600):
        raise LdregError(f"{HEARTBEAT_ENV}={raw[:40]!r}: give seconds between 0.05 and 3600, e.g. 10")
    return value


class RunNotSaved(DatabaseError):
    """The run ended, but the database did not take its final record: it waits in a spool file."""


class DurableMongoObserver(MongoObserver):
    """Sacred's MongoObserver, made durable and bounded.

    - Metrics: Sacred hands the points logged since the last heartbeat to ``log_metrics`` once and
      drops them if the write fails. Here they wait in memory per metric and go out with the next
      heartbeat or the final event, journaled, skipping steps already stored (exactly once).
    - The final save: one attempt with a short timeout (Sacred retries for minutes); if the
      database does not answer, the run document is saved in ``failure_dir`` as JSON, next to any
      metric points still pending, for `ldreg db flush`. ``spooled`` lists what was saved there.
    - A run whose observations are still spooled is not saved as COMPLETED: its final document
      waits in the spool until `ldreg db flush` has stored those observations.
    - Run ids come from ldreg's counter (never reused after a delete), not from max(_id) + 1.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, dict[str, list]] = {}
        self.spooled: list[Path] = []
        self._hold_final = False
        self._finished = False
        self._lock = threading.RLock()  # the heartbeat thread and the main thread both write
        journaled = WriteConcern(j=True)
        self.runs = self.runs.with_options(write_concern=journaled)
        if self.metrics is not None:
            self.metrics = self.metrics.with_options(write_concern=journaled)

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        if self.overwrite is None and _id is None:
            from ldreg.store.runs import next_run_id

            _id = next_run_id(self.runs.database)
        return super().started_event(ex_info, command, host_info, start_time, config, meta_info, _id)

    # -- metrics -----------------------------------------------------------------------------

    def log_metrics(self, metrics_by_name, info):
        from ldreg.store.metrics import merge_series

        with self._lock:
            merge_series(self.pending, metrics_by_name)
            self._flush_metrics(info)

    def write_metrics_now(self, metrics_by_name, info) -> dict[str, dict[str, list]]:
        """Write now (before a checkpoint); returns a copy of what is still pending (the database is down)."""
        with self._lock:
            self.log_metrics(metrics_by_name, info)
            return {name: {k: list(v) for k, v in series.items()} for name, series in self.pending.items()}

    def _flush_metrics(self, info) -> bool:
        from ldreg.store.metrics import new_points

        for name in list(self.pending):
            try:
                fresh = new_points(self.metrics, self.run_entry["_id"], name, self.pending[name])
                if fresh["steps"]:
                    super().log_metrics({name: fresh}, info)
            except PyMongoError as exc:
                log.warning("metrics kept for later: the database did not answer (%s)", type(exc).__name__)
                return False
            del self.pending[name]
        return True

    def heartbeat_event(self, info, captured_out, beat_time, result):
        with self._lock:
            if self._finished:  # a late beat (Sacred joins its thread for 2 s only) must not save over the end
                return
            try:
                super().heartbeat_event(info, captured_out, beat_time, result)
            except PyMongoError as exc:  # Sacred would mark this observer failed and stop beating
                log.warning("heartbeat not saved: the database did not answer (%s)", type(exc).__name__)

    # -- the end -----------------------------------------------------------------------------

    def _final(self, event: str, **kwargs):
        from ldreg.store.metrics import merge_series
        from ldreg.store.spool import read_json, write_json

        with self._lock:
            self._finished = True
            self._flush_metrics(self.run_entry.get("info", {}))
            if self.pending and self.failure_dir:
                path = Path(self.failure_dir) / f"metrics-run-{self.run_entry['_id']}.json"
                saved: dict = read_json(path) if path.exists() else {}
                merge_series(saved, self.pending)
                write_json(path, saved)
                self.spooled.append(path)
                log.warning("the database is down: metrics of run %s saved in %s", self.run_entry["_id"], path)
            return getattr(super(), event)(**kwargs)

    def final_save(self, attempts):
        """One bounded attempt; else the run document goes to the spool for `ldreg db flush`."""
        if not self._hold_final:
            for _ in range(2):  # the second try only after making the document BSON-safe
                try:
                    self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
                    return
                except (PyMongoError, InvalidDocument) as exc:
                    if not isinstance(exc, InvalidDocument):
                        log.warning("final save of run %s failed (%s)", self.run_entry["_id"], type(exc).__name__)
                        break
                    self.run_entry = force_bson_encodeable(self.run_entry)
        if not self.failure_dir:
            return
        from ldreg.store.spool import write_json

        path = Path(self.failure_dir) / f"run-{self.run_entry['_id']}.json"
        try:
            write_json(path, self.run_entry)
        except (TypeError, ValueError):
            write_json(path, force_bson_encodeable(self.run_entry))
        self.spooled.append(path)

    def completed_event(self, stop_time, result):
        self._hold_final = bool(isinstance(result, dict) and result.get("observations_spooled"))
        return self._final("completed_event", stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        return self._final("interrupted_event", interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        return self._final("failed_event", fail_time=fail_time, fail_trace=fail_trace)


@dataclass
class RunContext:
    """What the experiment body gets: the Sacred run id and a metric logger."""

    run_id: int
    log_scalar: Callable[[str, float, int], None]
    add_artifact: Callable[[str, str], None]
    info: dict[str, Any]
    # Write the metrics logged so far now (before a checkpoint); returns what is still unwritten.
    flush_metrics: Callable[[], dict[str, dict[str, list]]] = field(default=lambda: {})


Body = Callable[[RunContext], dict[str, Any]]


def run_tracked(name: str, run_config: dict[str, Any], body: Body, *, url: str, tags: list[str] = (),
                db_name: str | None = None, spec_path: str | Path | None = None, comment: str = "",
                overwrite: int | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``body`` as a Sacred experiment named ``name`` observed into MongoDB; return (run id, result).

    ``run_config`` is what Sacred records as the run's config (an experiment spec as a dict, or a
    simulation's settings). ``overwrite``: continue the run with this id (``--resume``).
    Sacred marks the run FAILED on an exception and INTERRUPTED on Ctrl-C; ``body`` is
    responsible for flushing what it computed before it re-raises (the runner's sink does).
    If the database does not answer when the run ends, this raises RunNotSaved naming the spool
    files and `ldreg db flush`, after a bounded wait (DB_TIMEOUT_S per write, not minutes).
    """
    from ldreg.store.spool import sacred_dir, spool_dir

    db_name = db_name or config.db_name()
    beat = heartbeat_s()
    SETTINGS.DEFAULT_BEAT_INTERVAL = beat  # read by each new Sacred Run
    ms = int(DB_TIMEOUT_S * 1000)
    ex = Experiment(name, save_git_info=False)
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.add_config(run_config)
    observer = DurableMongoObserver(url=url, db_name=db_name, overwrite=overwrite,
                                    failure_dir=str(sacred_dir(spool_dir(db_name))),
                                    serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=60_000)
    ex.observers.append(observer)

    @ex.main
    def main(_run):
        def flush_metrics():
            return observer.write_metrics_now(linearize_metrics(_run._metrics.get_last_metrics()), _run.info)

        ctx = RunContext(run_id=_run._id, log_scalar=lambda n, v, s: _run.log_scalar(n, v, s),
                         add_artifact=lambda path, name: _run.add_artifact(path, name=name), info=_run.info,
                         flush_metrics=flush_metrics)
        _run.info["tags"] = list(tags)
        if spec_path:
            _run.add_resource(str(spec_path))
        return body(ctx)

    try:
        run = ex.run(meta_info={"comment": comment, "tags": list(tags), "heartbeat_s": beat, "pid": os.getpid()},
                     options={"--name": name, "--loglevel": "WARNING"})
    except BaseException:
        if observer.spooled:
            log.warning("the database did not answer at the end: the run's final record waits in %s; "
                        "store it with `ldreg db flush`", ", ".join(map(str, dict.fromkeys(observer.spooled))))
        raise
    result = run.result if isinstance(run.result, dict) else {}
    if observer.spooled or result.get("observations_spooled"):
        waiting = [f"{result['observations_spooled']} observation(s) in {result.get('spool')}"] \
            if result.get("observations_spooled") else []
        waiting += [str(p) for p in dict.fromkeys(observer.spooled)]
        raise RunNotSaved(
            f"run {run._id} finished training, but the database did not answer within the bound "
            f"(~{DB_TIMEOUT_S:g} s a write): it is not recorded as finished. Waiting on disk: "
            f"{'; '.join(waiting)}. Store them with `ldreg db flush` once `ldreg db status` answers")
    return run._id, run.result

"""The spool: bucket documents that could not reach the database, kept in a JSON-lines file.

When the database is down, a run keeps training and its buckets are appended here
(``<home>/spool/<database>/run-<id>.jsonl``: run ids are unique only within one database, and never
reused there). What Sacred could not save when a run ended (its last metric points and its final
run document) waits beside them in ``sacred/``, and `ldreg db flush` replays all three. Replaying inserts them and removes lines only once they
are stored; bucket ids are deterministic, so a bucket stored twice (a batch that half-landed
before the server died, a replay interrupted and run again) is a duplicate-key error that is
counted and ignored. A document the server refuses for any other reason is moved to
``<file>.rejected`` so that one bad bucket cannot block a replay forever.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from bson import json_util
from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from ldreg import config
from ldreg.store.collections import OBSERVATIONS, RUNS

log = logging.getLogger("ldreg.store")

DUPLICATE_KEY = 11000
REPLAY_BATCH = 64
_JSON_OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)


def spool_dir(db_name: str | None = None) -> Path:
    return config.home() / "spool" / (db_name or config.db_name())


def spool_path_for(run_id: int, db_name: str | None = None) -> Path:
    return spool_dir(db_name) / f"run-{run_id}.jsonl"


def sacred_dir(directory: Path) -> Path:
    """Where a run's unsaved metrics and final run document wait (Sacred's ``failure_dir``)."""
    return directory / "sacred"


def metrics_spool_path(directory: Path, run_id: int) -> Path:
    return sacred_dir(directory) / f"metrics-run-{run_id}.json"


def run_spool_path(directory: Path, run_id: int) -> Path:
    return sacred_dir(directory) / f"run-{run_id}.json"


def write_json(path: Path, value: Any) -> None:
    """Write atomically and durably (a half-written record must never replace a whole one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json_util.dumps(value, json_options=_JSON_OPTIONS))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json_util.loads(path.read_text(), json_options=_JSON_OPTIONS)


@dataclass
class WriteCounts:
    """What happened to a set of bucket documents."""

    stored: int = 0
    duplicates: int = 0  # already in the database: counted, not an error
    rejected: int = 0  # refused by the server for another reason; kept in a .rejected file
    left: int = 0  # still in the spool (the database went away again)
    lost: int = 0  # neither stored nor spooled (the spool could not be written): gone

    def add(self, other: "WriteCounts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def insert_documents(collection: Collection, docs: list[dict[str, Any]]) -> tuple[WriteCounts, list[dict]]:
    """Insert unordered; duplicate keys are fine. Returns counts and the documents refused.

    Connection errors propagate: the caller decides to spool.
    """
    if not docs:
        return WriteCounts(), []
    try:
        collection.insert_many(docs, ordered=False)
        return WriteCounts(stored=len(docs)), []
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        refused = [docs[e["index"]] for e in errors if e.get("code") != DUPLICATE_KEY]
        if refused:
            first = next(e for e in errors if e.get("code") != DUPLICATE_KEY)
            log.error("the database refused %d bucket(s), e.g. %s: %s", len(refused), first.get("op", {}).get("_id"),
                      first.get("errmsg"))
        counts = WriteCounts(stored=exc.details.get("nInserted", 0), duplicates=len(errors) - len(refused),
                             rejected=len(refused))
        return counts, refused


class Spool:
    """An append-only JSON-lines file of bucket documents; safe to share between threads."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._lock = threading.Lock()

    def append(self, docs: Iterable[dict[str, Any]]) -> int:
        lines = [json_util.dumps(doc, json_options=_JSON_OPTIONS) + "\n" for doc in docs]
        if not lines:
            return 0
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
        return len(lines)

    def pending(self) -> int:
        """How many buckets wait in the spool (a path that is not a regular file holds none)."""
        with self._lock:
            if self.path.exists() and not self.path.is_file():
                return 0
            try:
                with open(self.path) as f:
                    return sum(1 for line in f if line.strip())
            except (FileNotFoundError, NotADirectoryError):
                return 0

    def reject(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            with open(self.rejected_path, "a") as f:
                f.writelines(json_util.dumps(d, json_options=_JSON_OPTIONS) + "\n" for d in docs)

    def replay(self, collection: Collection, batch_size: int = REPLAY_BATCH) -> WriteCounts:
        """Store every spooled bucket, then remove the file. On a connection error the
        unstored remainder stays in the spool and the error propagates."""
        counts = WriteCounts()
        with self._lock:
            if self.path.exists() and not self.path.is_file():
                return counts  # a device or folder in its place (a broken spool) holds nothing to replay
            try:
                handle = open(self.path)
            except (FileNotFoundError, NotADirectoryError):
                return counts
            with handle:
                lines = iter(handle)
                batch: list[str] = []
                try:
                    for line in lines:
                        if line.strip():
                            batch.append(line)
                        if len(batch) >= batch_size:
                            self._store(collection, batch, counts)
                            batch = []
                    self._store(collection, batch, counts)
                    batch = []
                except BaseException:
                    self._keep(batch + list(lines))
                    raise
            self.path.unlink()
        return counts

    def _store(self, collection: Collection, lines: list[str], counts: WriteCounts) -> None:
        docs, torn = [], []
        for line in lines:
            try:
                docs.append(json_util.loads(line, json_options=_JSON_OPTIONS))
            except ValueError:
                torn.append(line)  # a line cut short when the process died mid-write
        if torn:
            log.warning("moved %d unreadable line(s) of %s to %s", len(torn), self.path, self.rejected_path)
            with open(self.rejected_path, "a") as f:
                f.writelines(line if line.endswith("\n") else line + "\n" for line in torn)
        done, refused = insert_documents(collection, docs)
        self.reject(refused)
        done.rejected += len(torn)
        counts.add(done)

    def _keep(self, lines: list[str]) -> None:
        """Rewrite the spool with only the lines not yet stored (atomically)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)


def flush_spools(db: Database, directory: Path | None = None) -> dict[str, WriteCounts]:
    """Replay every observation spool file into ``db``; counts per file.

    A file whose replay hits a connection error keeps its unstored lines and is reported with
    ``left`` set; the remaining files are still tried.
    """
    from pymongo.errors import PyMongoError

    directory = Path(directory) if directory is not None else spool_dir(db.name)
    results: dict[str, WriteCounts] = {}
    for path in sorted(directory.glob("run-*.jsonl")):
        spool = Spool(path)
        try:
            results[path.name] = spool.replay(db.get_collection(OBSERVATIONS, write_concern=WriteConcern(j=True)))
        except PyMongoError as exc:
            counts = WriteCounts(left=spool.pending())
            log.warning("could not replay %s (%s); %d bucket(s) left in it", path, type(exc).__name__, counts.left)
            results[path.name] = counts
    return results


@dataclass
class FlushReport:
    """What `ldreg db flush` did: observations per spool file, metric points, final run documents."""

    observations: dict[str, WriteCounts]
    metric_points: int = 0
    runs_finished: list[int] | None = None
    waiting: list[str] | None = None  # records kept for a later flush, each with the reason

    def lines(self) -> list[str]:
        out = [f"{name}: stored {c.stored}, already there {c.duplicates}, rejected {c.rejected}, left {c.left}"
               for name, c in self.observations.items()]
        if self.metric_points:
            out.append(f"metrics: stored {self.metric_points} point(s)")
        for run_id in self.runs_finished or []:
            out.append(f"run {run_id}: final status stored")
        out.extend(self.waiting or [])
        return out or ["nothing spooled"]


def flush_all(db: Database, directory: Path | None = None) -> FlushReport:
    """Observations first, then metric points, then each run's final document (status, result).

    A run's final document is written only once none of its observations waits in a spool, so
    the database never shows a run COMPLETED whose observations are missing; and only over a run
    still recorded as RUNNING (a run resumed since then has a newer truth than the spooled one).
    """
    from ldreg.store.metrics import journaled_metrics, store_metrics

    directory = Path(directory) if directory is not None else spool_dir(db.name)
    report = FlushReport(flush_spools(db, directory), runs_finished=[], waiting=[])
    metrics = journaled_metrics(db)
    for path in sorted(sacred_dir(directory).glob("metrics-run-*.json")):
        run_id = int(path.stem.rsplit("-", 1)[1])
        report.metric_points += store_metrics(metrics, run_id, read_json(path))
        path.unlink()
    runs = db.get_collection(RUNS, write_concern=WriteConcern(j=True))
    for path in sorted(sacred_dir(directory).glob("run-*.json")):
        entry = read_json(path)
        run_id = entry["_id"]
        if Spool(directory / f"run-{run_id}.jsonl").pending():
            report.waiting.append(f"run {run_id}: final status kept in {path} until its observations are stored")
            continue
        current = runs.find_one({"_id": run_id}, {"status": 1})
        if current is not None and current.get("status") != "RUNNING":
            report.waiting.append(f"run {run_id}: {path} not applied: the run is {current.get('status')} now "
                                  f"(resumed or marked since); remove the file")
            continue
        runs.update_one({"_id": run_id}, {"$set": entry}, upsert=True)
        report.runs_finished.append(run_id)
        path.unlink()
    return report

"""The spool: bucket documents that could not reach the database, kept in a JSON-lines file.

When the database is down, a run keeps training and its buckets are appended here
(``<home>/spool/run-<id>.jsonl``). Replaying inserts them and removes lines only once they
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
from ldreg.store.documents import COLLECTION

log = logging.getLogger("ldreg.store")

DUPLICATE_KEY = 11000
REPLAY_BATCH = 64
_JSON_OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)


def spool_dir() -> Path:
    return config.home() / "spool"


def spool_path_for(run_id: int) -> Path:
    return spool_dir() / f"run-{run_id}.jsonl"


@dataclass
class WriteCounts:
    """What happened to a set of bucket documents."""

    stored: int = 0
    duplicates: int = 0  # already in the database: counted, not an error
    rejected: int = 0  # refused by the server for another reason; kept in a .rejected file
    left: int = 0  # still in the spool (the database went away again)

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
        """How many buckets wait in the spool."""
        with self._lock:
            try:
                with open(self.path) as f:
                    return sum(1 for line in f if line.strip())
            except FileNotFoundError:
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
            try:
                handle = open(self.path)
            except FileNotFoundError:
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
    """Replay every spool file into ``db`` (what `ldreg db flush` runs); counts per file.

    A file whose replay hits a connection error keeps its unstored lines and is reported with
    ``left`` set; the remaining files are still tried.
    """
    from pymongo.errors import PyMongoError

    directory = Path(directory) if directory is not None else spool_dir()
    results: dict[str, WriteCounts] = {}
    for path in sorted(directory.glob("run-*.jsonl")):
        spool = Spool(path)
        try:
            results[path.name] = spool.replay(db.get_collection(COLLECTION, write_concern=WriteConcern(j=True)))
        except PyMongoError as exc:
            counts = WriteCounts(left=spool.pending())
            log.warning("could not replay %s (%s); %d bucket(s) left in it", path, type(exc).__name__, counts.left)
            results[path.name] = counts
    return results

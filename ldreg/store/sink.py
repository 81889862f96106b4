"""StoreSink: observations into MongoDB from a background thread, never losing one.

Training calls ``emit``, which converts the observation to its bucket document and puts it on
a bounded queue (blocking briefly when the writer lags, so memory stays bounded). A writer
thread inserts batches with pymongo ``insert_many(ordered=False)``. If the database is
unreachable or dies, batches go to the spool and training goes on; the writer pings the
database every ``retry_interval_s`` and, once it answers, replays the spool before writing
new batches. Bucket ids are deterministic, so nothing is stored twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from pymongo import WriteConcern
from pymongo.database import Database
from pymongo.errors import PyMongoError

from ldreg.observations import Observation
from ldreg.store.documents import COLLECTION, bucket_from_observation, ensure_indexes
from ldreg.store.spool import Spool, WriteCounts, flush_spools, insert_documents, spool_path_for

__all__ = ["StoreSink", "flush_spools"]

log = logging.getLogger("ldreg.store")

_CLOSE = object()


class StoreSink:
    """An ``ObservationSink`` that stores one run's observations as buckets.

    ``db``: a pymongo Database (default: ``connection.connect()``); give its client short
    timeouts (``connection.open_client``) so an outage is noticed quickly.
    ``batch_size``: buckets per journaled insert; larger batches amortise the journal sync.
    ``emit_timeout_s``: how long ``emit`` waits on a full queue before writing that bucket
    straight to the spool (a writer stuck on a hung server must not stall training).
    """

    def __init__(
        self, run_id: int, db: Database | None = None, spool_path: Path | str | None = None,
        batch_size: int = 256, queue_size: int = 1024, retry_interval_s: float = 2.0,
        emit_timeout_s: float = 5.0,
    ):
        if db is None:
            from ldreg.store.connection import connect

            db = connect()
        self.run_id = int(run_id)
        # j=True: a batch counts as stored only once journaled. SecantusDB acknowledges plain
        # writes before they are durable, and a kill -9 then loses the last fraction of a second.
        self.collection = db.get_collection(COLLECTION, write_concern=WriteConcern(j=True))
        self.spool = Spool(spool_path if spool_path is not None else spool_path_for(self.run_id))
        self.batch_size = batch_size
        self.retry_interval_s = retry_interval_s
        self.emit_timeout_s = emit_timeout_s
        self.counts = WriteCounts()
        self.spooled = 0
        self._spooled_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._db_up = True
        self._indexed = False
        self._next_retry = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"ldreg-store-run-{run_id}", daemon=True)
        self._thread.start()

    # -- the sink interface ------------------------------------------------------------------

    def emit(self, obs: Observation) -> None:
        if self._closed:
            raise RuntimeError("StoreSink.emit after close()")
        try:  # converting to a document happens on the writer thread, off the training loop
            self._queue.put(obs, timeout=self.emit_timeout_s)
        except queue.Full:
            self._to_spool([bucket_from_observation(self.run_id, obs)])

    def close(self) -> WriteCounts:
        """Drain the queue, write or spool everything, try once more to empty the spool.

        Returns the counts; ``left`` is what stays in the spool for `ldreg db flush`.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
            self._thread.join()
            self._next_retry = 0.0
            self._try_reconnect()
            self.counts.left = self.spool.pending()
            if self.counts.left:
                log.warning("%d bucket(s) of run %d wait in %s; store them with `ldreg db flush`",
                            self.counts.left, self.run_id, self.spool.path)
        return self.counts

    def __enter__(self) -> "StoreSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch, closing = self._next_batch()
            if batch:
                self._write([bucket_from_observation(self.run_id, obs) for obs in batch])
            if closing:
                return

    def _next_batch(self) -> tuple[list[Observation], bool]:
        timeout = self.retry_interval_s if not self._db_up else None
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            self._try_reconnect()
            return [], False
        if first is _CLOSE:
            return [], True
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                return batch, True
            batch.append(item)
        return batch, False

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            if not self._db_up:
                self._try_reconnect()
            if self._db_up:
                self._insert(batch)
                return
        except Exception as exc:  # the writer must survive anything: spooling loses nothing
            self._went_down(exc)
        self._to_spool(batch)

    def _insert(self, batch: list[dict[str, Any]]) -> None:
        if not self._indexed:
            ensure_indexes(self.collection.database)
            self._indexed = True
        counts, refused = insert_documents(self.collection, batch)
        self.spool.reject(refused)
        self.counts.add(counts)

    def _try_reconnect(self) -> None:
        """Every ``retry_interval_s`` while down: ping, and replay the spool if it answers."""
        if time.monotonic() < self._next_retry:
            return
        try:
            self.collection.database.client.admin.command("ping")
            replayed = self.spool.replay(self.collection)
        except Exception as exc:
            self._went_down(exc)
            return
        if not self._db_up:
            log.warning("the database is back; stored %d spooled bucket(s) of run %d", replayed.stored, self.run_id)
        self._db_up = True
        self.counts.add(replayed)

    def _went_down(self, exc: BaseException) -> None:
        if self._db_up:
            kind = "database error" if isinstance(exc, PyMongoError) else "error"
            log.warning("%s while storing run %d (%s); spooling to %s and retrying every %g s",
                        kind, self.run_id, type(exc).__name__, self.spool.path, self.retry_interval_s)
        self._db_up = False
        self._next_retry = time.monotonic() + self.retry_interval_s

    def _to_spool(self, docs: list[dict[str, Any]]) -> None:
        written = self.spool.append(docs)
        with self._spooled_lock:
            self.spooled += written

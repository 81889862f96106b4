"""StoreSink: observations into MongoDB from a background thread, never losing one.

Training calls ``emit``, which puts the observation on a bounded queue (blocking briefly when
the writer lags, so memory stays bounded). A converter thread turns each observation into a bucket
document (already BSON); a writer thread, whenever it is free, inserts the documents converted so
far (at least ``MIN_BATCH`` unless no more are coming, at most ``batch_size``) with pymongo
``insert_many(ordered=False)`` (group commit: the next batch is converted while the server journals
the last, and neither the first batch nor a probe pass's burst waits for a full batch). Each insert
costs the embedded server about 1 ms of CPU whatever its size, so a bucket at a time would cost
training more than the buckets themselves. Only the writer touches the database and the spool. An
observation counts as done (``settle``) once the writer has stored or spooled it.
If the database is unreachable or dies, batches go to the spool and training goes on; the
writer pings the database every ``retry_interval_s`` and, once it answers, replays the spool
before writing new batches. Bucket ids are deterministic, so nothing is stored twice.

If the spool itself cannot be written (a read-only folder, a full disk), batches wait in memory
(up to ``max_held`` buckets) and go to the database when it returns; ``close`` waits a bounded
time for it. Whatever is still neither stored nor spooled then is counted in ``counts.lost``,
never dropped silently: the runner turns a nonzero ``lost`` or ``left`` into a loud failure.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import IndexModel, WriteConcern
from pymongo.database import Database
from pymongo.errors import PyMongoError

from ldreg.observations import Observation
from ldreg.store.collections import OBSERVATIONS
from ldreg.store.documents import ObservationBucket, bucket_from_observation
from ldreg.store.spool import Spool, WriteCounts, flush_spools, insert_documents, spool_path_for
from ldreg.store.tables import RunTables

__all__ = ["StoreSink", "flush_spools"]

log = logging.getLogger("ldreg.store")

_CLOSE = object()
FINAL_WAIT_S = 5.0  # how long close() waits for a database that is down before reporting
MAX_HELD = 50_000  # buckets kept in memory while neither the database nor the spool takes them
# The writer waits for this many converted buckets unless no more are coming: each insert costs the
# embedded server ~1 ms of CPU whatever its size (1.3 ms a bucket one at a time, <0.1 ms in batches of 64).
MIN_BATCH = 32
RAW_OPTIONS = CodecOptions(document_class=RawBSONDocument, tz_aware=True)  # how a spool line reads them back


class StoreSink:
    """An ``ObservationSink`` that stores one run's observations as buckets.

    ``db``: a pymongo Database (default: ``connection.connect()``); give its client short
    timeouts (``connection.open_client``) so an outage is noticed quickly.
    ``batch_size``: at most this many buckets per journaled insert (the writer takes what is ready).
    ``emit_timeout_s``: how long ``emit`` waits on a full queue before writing that bucket
    straight to the spool (a writer stuck on a hung server must not stall training).
    """

    def __init__(
        self, run_id: int, db: Database | None = None, spool_path: Path | str | None = None,
        batch_size: int = 256, queue_size: int = 1024, retry_interval_s: float = 2.0,
        emit_timeout_s: float = 5.0, final_wait_s: float = FINAL_WAIT_S, max_held: int = MAX_HELD,
        summary_tables: bool = True,
    ):
        if db is None:
            from ldreg.store.connection import connect

            db = connect()
        self.run_id = int(run_id)
        # every bucket's summaries, written as the run's tables at close when all was stored (a
        # first query then reads one document a run, not every bucket); off for a resumed run
        self.tables = RunTables() if summary_tables else None
        self.final_wait_s = final_wait_s
        self.max_held = max_held
        self._held: list[Mapping[str, Any]] = []  # buckets the spool refused, waiting for the database
        self._held_lock = threading.Lock()
        self.spool_error: str | None = None
        self.lost = 0
        self._lost_lock = threading.Lock()
        self.lost_from_step: int | None = None  # the earliest step of a lost bucket
        # j=True: a batch counts as stored only once journaled. SecantusDB acknowledges plain
        # writes before they are durable, and a kill -9 then loses the last fraction of a second.
        self.collection = db.get_collection(OBSERVATIONS, write_concern=WriteConcern(j=True))
        self.spool = Spool(spool_path if spool_path is not None else spool_path_for(self.run_id, db.name))
        self.batch_size = batch_size
        self.retry_interval_s = retry_interval_s
        self.emit_timeout_s = emit_timeout_s
        self.counts = WriteCounts()
        self.thread_cpu_s = 0.0  # CPU seconds of the converter and writer threads (what they take from training)
        self._cpu_lock = threading.Lock()
        self.spooled = 0
        self._spooled_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._db_up = True
        self._indexed = False
        self._next_retry = 0.0
        self._closed = False
        self._ready: list[Mapping[str, Any]] = []  # converted documents waiting for the writer, in order
        self._ready_cv = threading.Condition()
        self._converted_all = False  # the converter has seen close() and converted everything before it
        self._converter_idle = False  # the converter waits on an empty queue: nothing more is coming now
        self.min_batch = min(MIN_BATCH, batch_size)
        self._thread = threading.Thread(target=self._run, name=f"ldreg-store-run-{run_id}", daemon=True)
        self._writer = threading.Thread(target=self._send, name=f"ldreg-store-write-{run_id}", daemon=True)
        self._writer.start()
        self._thread.start()

    # -- the sink interface ------------------------------------------------------------------

    def emit(self, obs: Observation) -> None:
        if self._closed:
            raise RuntimeError("StoreSink.emit after close()")
        if not (self._thread.is_alive() and self._writer.is_alive()):  # never by design; if so, fail loudly
            raise RuntimeError(f"the writer thread of run {self.run_id} has stopped; observations cannot be stored")
        try:  # converting to a document happens on the converter thread, off the training loop
            self._queue.put(obs, timeout=self.emit_timeout_s)
        except queue.Full:
            doc = bucket_from_observation(self.run_id, obs)
            if self.tables is not None:
                self.tables.add(doc)
            self._to_spool([doc])

    def close(self) -> WriteCounts:
        """Drain the queue, write or spool everything; if anything is not stored, wait up to
        ``final_wait_s`` for the database, then put what memory still holds in the spool.

        Returns the counts: ``left`` stays in the spool for `ldreg db flush`; ``lost`` is gone.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
            self._thread.join()
            self._writer.join()
            deadline = time.monotonic() + self.final_wait_s
            while self._held or self.spool.pending():  # nothing waiting (the usual close): no round trip
                self._next_retry = 0.0
                self._try_reconnect()
                if (not self._held and not self.spool.pending()) or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.5, self.retry_interval_s))
            with self._held_lock:
                held, self._held = self._held, []
            if held:
                try:
                    self.spool.append(held)
                except Exception as exc:
                    self._spool_failed(exc, len(held))
                    self._lose(held)
            self.counts.left = self.spool.pending()
            self.counts.lost = self.lost
            if self.counts.left:
                log.warning("%d bucket(s) of run %d wait in %s; store them with `ldreg db flush`",
                            self.counts.left, self.run_id, self.spool.path)
            if self.counts.lost:
                log.error("%d bucket(s) of run %d could be neither stored nor spooled (%s)",
                          self.counts.lost, self.run_id, self.spool_error)
            if self.tables is not None and not (self.counts.left or self.counts.lost or self.counts.rejected):
                self._write_tables()
        return self.counts

    def _write_tables(self) -> None:
        """The run's summary tables; a failure costs the run's first query a pass over its buckets
        (the tables are a copy of what the buckets carry), so it is logged, not raised."""
        try:
            self.tables.write(self.collection.database, self.run_id)
        except Exception as exc:
            log.warning("run %d: summary tables not written (%s); a first query reads every bucket instead",
                        self.run_id, exc)

    def __enter__(self) -> "StoreSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the converter and writer threads ----------------------------------------------------

    def _run(self) -> None:
        """Converter: each observation -> a document, appended to ``_ready`` in order."""
        try:
            self._convert_loop()
        finally:
            self._add_cpu(time.thread_time())

    def _add_cpu(self, seconds: float) -> None:
        with self._cpu_lock:
            self.thread_cpu_s += seconds

    def _convert_loop(self) -> None:
        while True:
            if self._queue.empty():  # tell the writer not to wait for more (a probe pass's burst is over)
                with self._ready_cv:
                    self._converter_idle = True
                    self._ready_cv.notify_all()
            obs = self._queue.get()
            self._converter_idle = False
            if obs is _CLOSE:
                with self._ready_cv:
                    self._converted_all = True
                    self._ready_cv.notify_all()
                self._queue.task_done()
                return
            doc = self._convert(obs)
            if doc is None:  # counted as lost by _convert: done with it
                self._queue.task_done()
                continue
            with self._ready_cv:
                while len(self._ready) >= 2 * self.batch_size:  # the writer lags: bounded memory
                    self._ready_cv.wait()
                self._ready.append(doc)  # the writer marks it done (task_done) once stored or spooled
                self._ready_cv.notify_all()

    def _send(self) -> None:
        """Writer: whenever it is free, insert the documents converted so far (up to ``batch_size``).

        Group commit: it goes as soon as ``min_batch`` documents are ready, or fewer when the converter
        has nothing more to do (the end of a probe pass's burst), so neither a burst nor the first
        batch waits for a full ``batch_size``, and while the server journals one batch the converter
        readies the next. The indexes are created first, while the converter works.
        """
        try:
            self._index_early()
            self._send_loop()
        finally:
            self._add_cpu(time.thread_time())

    def _index_early(self) -> None:
        try:
            self._ensure_indexes()
        except Exception as exc:  # down already: the first write spools, and the retry creates them
            self._went_down(exc)

    def _send_loop(self) -> None:
        while True:
            with self._ready_cv:
                while not self._batch_ready():
                    if self._db_up:
                        self._ready_cv.wait()
                    elif not self._ready_cv.wait(timeout=max(self._next_retry - time.monotonic(), 0.01)):
                        break  # down and nothing came: time to retry the database
                docs = self._ready[: self.batch_size]
                del self._ready[: self.batch_size]
                finished = self._converted_all and not self._ready
                self._ready_cv.notify_all()  # room for the converter
            try:
                if docs:
                    self._write(docs)
                elif not self._db_up:
                    self._try_reconnect()
            except Exception as exc:  # never by design (_write and _try_reconnect catch); keep counting
                log.error("run %d: the store writer failed: %s", self.run_id, exc)
                if docs:
                    self._to_spool(docs)
            finally:
                for _ in range(len(docs)):
                    self._queue.task_done()
            if finished:
                return

    def _batch_ready(self) -> bool:
        """Whether the writer should insert now (called holding ``_ready_cv``): ``min_batch``
        documents are ready, or some are and no more are coming for now, or the converter is done."""
        if self._converted_all:
            return True
        return len(self._ready) >= self.min_batch or (bool(self._ready) and self._converter_idle)

    def _convert(self, obs: Observation) -> RawBSONDocument | None:
        """The bucket document, already BSON: encoded here, a document at a time, because pymongo
        encodes a whole insert_many batch in one C call that holds the GIL (tens of milliseconds for
        256 buckets of 500 values), and training threads wait on the GIL meanwhile. Raw documents
        go to the server as they are."""
        try:
            doc = bucket_from_observation(self.run_id, obs)
            raw = RawBSONDocument(bson.encode(doc), RAW_OPTIONS)
            if self.tables is not None:
                self.tables.add(doc)
            return raw
        except Exception as exc:  # an observation that cannot be a document: counted, named
            log.error("run %d: observation %s/%s at step %s cannot be stored: %s", self.run_id,
                      obs.kind, obs.response_type, obs.step, exc)
            self._lose([{"step": getattr(obs, "step", 0)}])
            return None

    def _write(self, batch: list[Mapping[str, Any]]) -> None:
        try:
            if not self._db_up:
                self._try_reconnect()
            if self._db_up:
                self._insert(batch)
                return
        except Exception as exc:  # the writer must survive anything: spooling loses nothing
            self._went_down(exc)
        self._to_spool(batch)

    def _insert(self, batch: list[Mapping[str, Any]]) -> None:
        if not self._indexed:
            self._ensure_indexes()
        counts, refused = insert_documents(self.collection, batch)
        self.spool.reject(refused)
        self.counts.add(counts)

    def _ensure_indexes(self) -> None:
        """The bucket indexes ``ensure_indexes`` creates, in one ``createIndexes`` command, not one per
        index: each round trip comes before the first insert, and with the converter busy beside it one
        took up to ~50 ms."""
        models = [IndexModel(spec["fields"]) for spec in ObservationBucket._meta["index_specs"]]
        self.collection.database[OBSERVATIONS].create_indexes(models)  # the database's write concern, as before
        self._indexed = True

    def _try_reconnect(self) -> None:
        """Every ``retry_interval_s`` while down: ping, and replay the spool if it answers."""
        if time.monotonic() < self._next_retry:
            return
        try:
            self.collection.database.client.admin.command("ping")
            replayed = self.spool.replay(self.collection)
            self._store_held()
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

    def _to_spool(self, docs: list[Mapping[str, Any]]) -> None:
        try:
            written = self.spool.append(docs)
        except Exception as exc:  # unwritable folder, full disk: hold them, never drop them
            self._spool_failed(exc, len(docs))
            with self._held_lock:
                room = max(self.max_held - len(self._held), 0)
                self._held.extend(docs[:room])
            self._lose(docs[room:])
            return
        with self._spooled_lock:
            self.spooled += written

    def settle(self, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``, default ``emit_timeout_s``) until every observation emitted so
        far is stored or spooled; True if so. A checkpoint is safe to write only then: resuming from
        it must recompute whatever might yet be lost."""
        if self.at_risk():
            return False
        deadline = time.monotonic() + (self.emit_timeout_s if timeout_s is None else timeout_s)
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return not self.at_risk()

    def at_risk(self) -> bool:
        """True while some bucket is neither stored nor spooled (held in memory, or lost)."""
        return bool(self._held) or self.lost > 0

    def _lose(self, docs: list[Mapping[str, Any]]) -> None:
        if docs:
            first = min(int(d.get("step", 0)) for d in docs)
            with self._lost_lock:  # the converter, the writer and emit may all count a loss
                self.lost += len(docs)
                self.lost_from_step = first if self.lost_from_step is None else min(first, self.lost_from_step)

    def _store_held(self) -> None:
        """Write what the spool refused, once the database answers (errors propagate: still down)."""
        with self._held_lock:
            held = list(self._held)
        if not held:
            return
        counts, refused = insert_documents(self.collection, held)
        self.spool.reject(refused)
        with self._held_lock:
            del self._held[: len(held)]
        self.counts.add(counts)
        log.warning("the database is back; stored %d bucket(s) of run %d kept in memory", len(held), self.run_id)

    def _spool_failed(self, exc: BaseException, n: int) -> None:
        reason = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        if self.spool_error is None:
            log.error("cannot write the spool %s (%s); keeping %d bucket(s) of run %d in memory until the "
                      "database answers", self.spool.path, reason, n, self.run_id)
        self.spool_error = reason

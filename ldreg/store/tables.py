"""A run's per-bucket summaries as one document of columns: the table a query reads in one fetch.

Every bucket carries the summary of each of its arrays (n, mean, std, median; ``documents``),
but reading them back bucket by bucket costs SecantusDB ~0.1 ms a document, so a first query of
10 runs of 5,600 buckets, or of a 100-run sweep, spent seconds just collecting summaries. A table
holds one (run, kind, quantity[, derived]) in one document (``STATS_TABLES``), with a ``stamp``
naming what it was made from; a reader passes the stamp it expects and gets None on any other.

Two writers: the sink, at the end of a run that stored every observation itself (stamp
``sink_stamp``: a resumed run's sink saw only its own buckets and writes none), and the query
layer (``ldreg.query.rows``), for runs it summarised (stamp: the run's mark).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Mapping, Sequence

from ldreg.store.collections import RUNS, STATS_TABLES, cache_filter

# The fields of a bucket's summary row, as the query layer stores it (``observation_stats``).
KEY_FIELDS = ("stage_index", "step", "probe_set", "response_type", "update_type")
SUMMARY_FIELDS = ("run_id", "kind", "stage", "examples_seen") + KEY_FIELDS
MAX_TABLE_VALUES = 1_000_000  # one document is 16 MB at most: larger runs are read row by row


def summary_row(bucket: Mapping[str, Any], quantity: str) -> dict[str, Any] | None:
    """A bucket's summary of ``quantity`` as a row (None when the bucket carries none)."""
    summary = (bucket.get("summary") or {}).get(quantity)
    if summary is None:
        return None
    return {**{f: bucket.get(f) for f in SUMMARY_FIELDS}, "n": summary["n"], "mean": summary["mean"],
            "std": summary["std"], "median": summary["median"], "bucket": bucket["_id"], "quantity": quantity}


def fits(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether these rows fit in one table document (``MAX_TABLE_VALUES``)."""
    return len(rows) * max((len(row) for row in rows[:1]), default=0) <= MAX_TABLE_VALUES


def table_id(run_id: int, kind: str, quantity: str, derived: str | None = None) -> str:
    return f"{int(run_id)}|{kind}|{quantity}|{derived or ''}"


def write_table(db, run_id: int, kind: str, quantity: str, derived: str | None, stamp: Mapping[str, Any],
                rows: Sequence[Mapping[str, Any]]) -> None:
    """Store ``rows`` as the run's table, stamped ``stamp``. A field a row lacks is listed under
    ``absent``, so that reading it back gives the same rows."""
    if not fits(rows):
        raise ValueError(f"{len(rows)} summaries of run #{run_id} do not fit in one table")
    fields = list(dict.fromkeys(f for row in rows for f in row))
    columns = {f: [row.get(f) for row in rows] for f in fields}
    absent = {f: [i for i, row in enumerate(rows) if f not in row] for f in fields}
    db[STATS_TABLES].replace_one({"_id": table_id(run_id, kind, quantity, derived)},
                                 {"stamp": dict(stamp), "rows": len(rows), "columns": columns,
                                  "absent": {f: i for f, i in absent.items() if i}}, upsert=True)


def read_table(db, run_id: int, kind: str, quantity: str, derived: str | None, stamp: Mapping[str, Any]
               ) -> list[dict[str, Any]] | None:
    """The rows of the run's table, or None when it has none with this stamp."""
    doc = db[STATS_TABLES].find_one({"_id": table_id(run_id, kind, quantity, derived)})
    return _rows(doc) if doc is not None and doc.get("stamp") == dict(stamp) else None


def read_sink_table(db, run_id: int, kind: str, quantity: str, run_start: Any
                    ) -> tuple[list[dict[str, Any]], int] | None:
    """The rows of the table the run's sink wrote, and how many buckets it saw; None when there is
    none for this run (by its start time)."""
    doc = db[STATS_TABLES].find_one({"_id": table_id(run_id, kind, quantity)})
    if doc is None:
        return None
    stamp = doc.get("stamp") or {}
    if stamp.get("source") != "sink" or stamp.get("run_start") != run_start:
        return None
    return _rows(doc), int(stamp["buckets"])


def _rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns, absent = doc["columns"], doc.get("absent") or {}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []
    for f, indices in absent.items():
        for i in indices:
            del rows[i][f]
    return rows


def forget_tables(db, run_id: int) -> int:
    """Delete every table of the run (before it is resumed); return how many there were."""
    return db[STATS_TABLES].delete_many(cache_filter(STATS_TABLES, run_id)).deleted_count


def sink_stamp(run_start: Any, buckets: int) -> dict[str, Any]:
    """The stamp of a table the sink wrote: the run (by its start) and how many buckets it saw."""
    return {"source": "sink", "run_start": run_start, "buckets": buckets}


class RunTables:
    """The summary rows of every bucket a sink writes, gathered for the run's tables.

    ``add`` takes each bucket document as the sink converts it (its ``summary``, not its arrays);
    ``write`` stores one table per (kind, quantity) and says how many it wrote.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)  # by bucket id
        self.buckets: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()  # the converter adds, and so does emit when the queue is full

    def add(self, bucket: Mapping[str, Any]) -> None:
        with self._lock:
            self.buckets[bucket["kind"]].add(bucket["_id"])
            for quantity in bucket.get("summary") or {}:
                row = summary_row(bucket, quantity)
                if row is not None:
                    self.rows[(bucket["kind"], quantity)][bucket["_id"]] = row

    def write(self, db, run_id: int) -> int:
        """One table per (kind, quantity), stamped with the run's start time; those too large for
        one document are left to the query layer. Returns how many were written."""
        run = db[RUNS].find_one({"_id": int(run_id)}, {"start_time": 1})
        if run is None:
            return 0
        written = 0
        for (kind, quantity), by_bucket in self.rows.items():
            rows = list(by_bucket.values())
            if len(rows) == len(self.buckets[kind]) and fits(rows):  # every bucket of the kind summarised
                write_table(db, run_id, kind, quantity, None, sink_stamp(run.get("start_time"), len(rows)), rows)
                written += 1
        return written


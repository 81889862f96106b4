"""Sacred's metric series written exactly once: every point is appended only if its step is new.

Sacred appends metrics with ``$push``, which is not idempotent: a write that landed but whose
reply was lost (the server killed mid-reply), replayed from a spool or re-logged after a resume
would store a step twice. Here each write first reads the steps already stored and drops those,
so retrying, replaying and resuming can never duplicate a step. Writes are journaled (``j=True``)
because SecantusDB acknowledges plain writes before they are durable.
"""

from __future__ import annotations

from typing import Any

from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database

from ldreg.store.collections import METRICS

KEYS = ("steps", "values", "timestamps")


def journaled_metrics(db: Database) -> Collection:
    return db.get_collection(METRICS, write_concern=WriteConcern(j=True))


def new_points(metrics: Collection, run_id: int, name: str, series: dict[str, list]) -> dict[str, list]:
    """The points of ``series`` whose step is neither stored for this run and metric nor repeated."""
    doc = metrics.find_one({"run_id": run_id, "name": name}, {"steps": 1})
    seen = set(doc.get("steps", [])) if doc else set()
    keep = []
    for i, step in enumerate(series["steps"]):
        if step not in seen:
            seen.add(step)
            keep.append(i)
    return {key: [series[key][i] for i in keep] for key in KEYS if key in series}


def store_metrics(metrics: Collection, run_id: int, metrics_by_name: dict[str, dict[str, list]],
                  info: dict[str, Any] | None = None) -> int:
    """Append each metric's new points (Sacred's document format); returns how many were new.

    Connection errors propagate: the caller keeps the points and tries again later.
    """
    added = 0
    for name, series in metrics_by_name.items():
        fresh = new_points(metrics, run_id, name, series)
        if not fresh.get("steps"):
            continue
        push = {key: {"$each": fresh.get(key, [])} for key in KEYS}
        result = metrics.update_one({"run_id": run_id, "name": name}, {"$push": push}, upsert=True)
        if result.upserted_id is not None and info is not None:
            info.setdefault("metrics", []).append({"name": name, "id": str(result.upserted_id)})
        added += len(fresh["steps"])
    return added


def merge_series(into: dict[str, dict[str, list]], more: dict[str, dict[str, list]]) -> None:
    """Append ``more``'s points to ``into`` metric by metric (what waits to be written)."""
    for name, series in more.items():
        slot = into.setdefault(name, {key: [] for key in KEYS})
        for key in KEYS:
            slot[key].extend(series.get(key, []))

"""Events: the alarms a run raised (ldreg.dynamics.displacement), one document each.

An event's ``_id`` is ``run|alarm|probing set``, and it is inserted only if absent, so a resumed or
replayed run stores each alarm once, at the step it first fired.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from pymongo import ASCENDING, WriteConcern

from ldreg.store.collections import EVENTS
from ldreg.store.connection import database


def event_id(run_id: int, alarm: str, probe_set: str) -> str:
    return f"{int(run_id)}|{alarm}|{probe_set}"


def record_event(run_id: int, event: dict[str, Any], db=None) -> bool:
    """Store ``event`` (alarm, probe_set, step, examples_seen, stage, stage_index, threshold, value,
    message, summary) on run ``run_id``, journaled; False when this alarm was already stored."""
    db = database(db)
    doc = {**event, "run_id": int(run_id), "created": datetime.now(timezone.utc)}
    result = db.get_collection(EVENTS, write_concern=WriteConcern(j=True)).update_one(
        {"_id": event_id(run_id, event["alarm"], event["probe_set"])}, {"$setOnInsert": doc}, upsert=True)
    return result.upserted_id is not None


def find_events(run_ids: Sequence[int] | None = None, alarm: str | None = None, db=None) -> list[dict[str, Any]]:
    """Events of the given runs (all runs when None), by run then step."""
    query: dict[str, Any] = {}
    if run_ids is not None:
        query["run_id"] = {"$in": [int(r) for r in run_ids]}
    if alarm is not None:
        query["alarm"] = alarm
    cursor = database(db)[EVENTS].find(query).sort([("run_id", ASCENDING), ("step", ASCENDING)])
    return list(cursor)


def delete_events(run_id: int, db=None) -> int:
    """Remove a run's events (with the run)."""
    return database(db)[EVENTS].delete_many({"run_id": int(run_id)}).deleted_count

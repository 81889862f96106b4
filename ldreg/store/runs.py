"""Past runs: listing, showing and deleting them, over Sacred's collections and ldreg's own.

Sacred keeps a run in ``runs`` (with ``metrics`` and GridFS artifacts beside it); ldreg keeps its
observations in ``observations`` under the same run id. A run is shown and deleted as one.

A run whose process died without a word (kill -9, a lost machine) stays RUNNING in Sacred's
document; it is shown as DEAD once its heartbeat is older than ``DEAD_AFTER_BEATS`` of its own
heartbeat intervals (and, on this host, its process is gone). A DEAD run can be resumed, marked
FAILED or deleted; a live RUNNING one cannot be deleted. Run ids come from a counter, so an id
is never given twice, even after its run is deleted (spool and checkpoint files are named by id).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

from pymongo import ReturnDocument, WriteConcern

from ldreg.errors import LdregError
from ldreg.store.collections import (COUNTERS, EVENTS, JUDGEMENTS, METRICS, OBSERVATIONS, PER_RUN_CACHES, RUNS,
                                     cache_filter)
from ldreg.store.connection import database

DEAD_AFTER_BEATS = 3
DEFAULT_HEARTBEAT_S = 10.0  # Sacred's default, for runs that did not record theirs


def next_run_id(db) -> int:
    """A run id never given before in this database: a counter, raised past any existing run id."""
    counters = db.get_collection(COUNTERS, write_concern=WriteConcern(j=True))
    top = db[RUNS].find_one({}, {"_id": 1}, sort=[("_id", -1)])
    highest = top["_id"] if top and isinstance(top["_id"], int) else 0
    counters.update_one({"_id": "runs"}, {"$max": {"last": highest}}, upsert=True)
    return int(counters.find_one_and_update({"_id": "runs"}, {"$inc": {"last": 1}},
                                            return_document=ReturnDocument.AFTER)["last"])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def heartbeat_age(doc: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """Seconds since the run's last sign of life (heartbeat, else start); None if it has none."""
    last = doc.get("heartbeat") or doc.get("start_time")
    if last is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # Sacred stores naive UTC
    return (now - last.replace(tzinfo=None)).total_seconds()


def is_dead(doc: dict[str, Any], now: dt.datetime | None = None) -> bool:
    """RUNNING, but no heartbeat for DEAD_AFTER_BEATS intervals, and not a live process of this host."""
    if doc.get("status") != "RUNNING":
        return False
    meta = doc.get("meta") or {}
    interval = float(meta.get("heartbeat_s") or DEFAULT_HEARTBEAT_S)
    age = heartbeat_age(doc, now)
    if age is None or age <= DEAD_AFTER_BEATS * interval:
        return False
    pid, host = meta.get("pid"), (doc.get("host") or {}).get("hostname")
    if pid and host == socket.gethostname() and _process_alive(int(pid)):
        return False  # alive but silent (its database writes hang): not dead
    return True


def shown_status(doc: dict[str, Any]) -> str:
    return "DEAD" if is_dead(doc) else doc.get("status", "-")


def _duration(doc: dict[str, Any]) -> str:
    start = doc.get("start_time")
    end = doc.get("stop_time") or doc.get("heartbeat")
    if not start or not end:
        return "-"
    seconds = int((end - start).total_seconds())
    return str(dt.timedelta(seconds=seconds))


def _losses(config: dict[str, Any]) -> str:
    return " → ".join(str(s.get("loss")) for s in config.get("stages", []) if isinstance(s, dict)) or "-"


def list_runs(status: str | None = None, tag: str | None = None, name: str | None = None,
              limit: int = 20, db=None) -> list[dict[str, Any]]:
    """The newest runs matching the filters, one row each, with their observation counts."""
    db = database(db)
    query: dict[str, Any] = {}
    wanted = status.upper() if status else None
    if wanted:
        query["status"] = "RUNNING" if wanted == "DEAD" else wanted
    if tag:
        query["meta.tags"] = tag
    if name:
        query["experiment.name"] = {"$regex": name}
    docs = list(db[RUNS].find(query, {"captured_out": 0, "info": 0}).sort("_id", -1).limit(limit))
    if wanted in ("DEAD", "RUNNING"):
        docs = [d for d in docs if shown_status(d) == wanted]
    counts = {row["_id"]: row["n"] for row in db[OBSERVATIONS].aggregate([
        {"$match": {"run_id": {"$in": [d["_id"] for d in docs]}}},
        {"$group": {"_id": "$run_id", "n": {"$sum": 1}}},
    ])}
    return [{
        "id": d["_id"],
        "name": d.get("experiment", {}).get("name", "-"),
        "status": shown_status(d),
        "losses": _losses(d.get("config", {})),
        "tags": ", ".join(d.get("meta", {}).get("tags") or []) or "-",
        "start": d["start_time"].strftime("%Y-%m-%d %H:%M") if d.get("start_time") else "-",
        "duration": _duration(d),
        "observations": counts.get(d["_id"], 0),
    } for d in docs]


def get_run(run_id: int, db=None) -> dict[str, Any]:
    doc = database(db)[RUNS].find_one({"_id": run_id})
    if doc is None:
        raise LdregError(f"no run with id {run_id}; `ldreg runs` lists the runs there are")
    return doc


def show_run(run_id: int, db=None) -> dict[str, Any]:
    """Config, status, a summary of every metric, and observation counts by kind and type."""
    db = database(db)
    doc = get_run(run_id, db)
    metrics = {}
    for m in db[METRICS].find({"run_id": run_id}):
        values = m.get("values") or []
        if values:
            metrics[m["name"]] = {"count": len(values), "first": values[0], "last": values[-1],
                                  "min": min(values), "max": max(values)}
    observations: dict[str, dict[str, int]] = {}
    for row in db[OBSERVATIONS].aggregate([
        {"$match": {"run_id": run_id}},
        {"$group": {"_id": {"kind": "$kind", "type": "$response_type"}, "n": {"$sum": 1}}},
    ]):
        observations.setdefault(row["_id"]["kind"], {})[row["_id"]["type"]] = row["n"]
    return {
        "id": run_id,
        "name": doc.get("experiment", {}).get("name"),
        "status": shown_status(doc),
        "heartbeat": str(doc.get("heartbeat")),
        "start": str(doc.get("start_time")),
        "duration": _duration(doc),
        "host": {k: doc.get("host", {}).get(k) for k in ("hostname", "cpu", "python_version", "os")},
        "result": doc.get("result"),
        "fail_trace": (doc.get("fail_trace") or [])[-3:],
        "config": doc.get("config"),
        "metrics": metrics,
        "observations": observations,
    }


def truncate_metrics(run_id: int, after_step: int, db=None) -> int:
    """Drop the metric points logged after ``after_step`` (a resumed run logs them again)."""
    db = database(db)
    metrics = db.get_collection(METRICS, write_concern=WriteConcern(j=True))
    changed = 0
    for m in metrics.find({"run_id": run_id}):
        keep = [i for i, s in enumerate(m.get("steps", [])) if s <= after_step]
        if len(keep) == len(m.get("steps", [])):
            continue
        metrics.update_one({"_id": m["_id"]}, {"$set": {
            key: [m[key][i] for i in keep] for key in ("steps", "values", "timestamps") if key in m}})
        changed += 1
    return changed


def refuse_if_live(doc: dict[str, Any], action: str) -> None:
    """A RUNNING run that still beats is writing: deleting or marking it would race with it."""
    if doc.get("status") == "RUNNING" and not is_dead(doc):
        age = heartbeat_age(doc)
        beat = f"last heartbeat {age:.0f} s ago" if age is not None else "no heartbeat yet"
        interval = float((doc.get("meta") or {}).get("heartbeat_s") or DEFAULT_HEARTBEAT_S)
        raise LdregError(
            f"run {doc['_id']} is RUNNING ({beat}); cannot {action} it while it runs. Stop it first (Ctrl-C), "
            f"or, if its process is gone, wait until `ldreg runs` shows it DEAD "
            f"(no heartbeat for {DEAD_AFTER_BEATS * interval:g} s)")


def mark_failed(run_id: int, db=None) -> dict[str, Any]:
    """Record a DEAD run as FAILED (its process died without saying so); returns the new fields."""
    db = database(db)
    doc = get_run(run_id, db)
    if doc.get("status") != "RUNNING":
        raise LdregError(f"run {run_id} is {doc.get('status')}, not RUNNING; nothing to mark")
    refuse_if_live(doc, "mark FAILED")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    fields = {"status": "FAILED", "stop_time": doc.get("heartbeat") or now,
              "fail_trace": [f"marked FAILED by `ldreg runs mark-failed` at {now:%Y-%m-%d %H:%M:%S} UTC: "
                             f"no heartbeat since {doc.get('heartbeat') or doc.get('start_time')}\n"]}
    db.get_collection(RUNS, write_concern=WriteConcern(j=True)).update_one(
        {"_id": run_id, "status": "RUNNING"}, {"$set": fields})
    return fields


def delete_run(run_id: int, db=None) -> dict[str, int]:
    """Remove the run document, its metrics, its artifacts, its observations and events together.

    A live RUNNING run is refused: it would go on writing, and Sacred's final save would
    re-create half a run. Its spool files on this machine go too (they belong to it alone).
    """
    import gridfs

    from ldreg.store.spool import metrics_spool_path, run_spool_path, spool_dir

    db = database(db)
    doc = get_run(run_id, db)
    refuse_if_live(doc, "delete")
    directory = spool_dir(db.name)
    for path in (directory / f"run-{run_id}.jsonl", metrics_spool_path(directory, run_id),
                 run_spool_path(directory, run_id)):
        path.unlink(missing_ok=True)
    fs = gridfs.GridFS(db)
    artifacts = 0
    for art in doc.get("artifacts", []) or []:
        if art.get("file_id") is not None:
            fs.delete(art["file_id"])
            artifacts += 1
    return {
        "observations": db[OBSERVATIONS].delete_many({"run_id": run_id}).deleted_count,
        "summaries": sum(db[name].delete_many(cache_filter(name, run_id)).deleted_count  # the query caches
                         for name in PER_RUN_CACHES),
        "metrics": db[METRICS].delete_many({"run_id": run_id}).deleted_count,
        "events": db[EVENTS].delete_many({"run_id": run_id}).deleted_count,  # alarms it raised
        "judgements": db[JUDGEMENTS].delete_many({"run_ids": run_id}).deleted_count,  # verdicts on its answers
        "artifacts": artifacts,
        "runs": db[RUNS].delete_one({"_id": run_id}).deleted_count,
    }

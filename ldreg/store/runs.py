"""Past runs: listing, showing and deleting them, over Sacred's collections and ldreg's own.

Sacred keeps a run in ``runs`` (with ``metrics`` and GridFS artifacts beside it); ldreg keeps its
observations in ``observations`` under the same run id. A run is shown and deleted as one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ldreg.errors import LdregError
from ldreg.store.connection import database

OBSERVATIONS = "observations"


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
    if status:
        query["status"] = status.upper()
    if tag:
        query["meta.tags"] = tag
    if name:
        query["experiment.name"] = {"$regex": name}
    docs = list(db.runs.find(query, {"captured_out": 0, "info": 0}).sort("_id", -1).limit(limit))
    counts = {row["_id"]: row["n"] for row in db[OBSERVATIONS].aggregate([
        {"$match": {"run_id": {"$in": [d["_id"] for d in docs]}}},
        {"$group": {"_id": "$run_id", "n": {"$sum": 1}}},
    ])}
    return [{
        "id": d["_id"],
        "name": d.get("experiment", {}).get("name", "-"),
        "status": d.get("status", "-"),
        "losses": _losses(d.get("config", {})),
        "tags": ", ".join(d.get("meta", {}).get("tags") or []) or "-",
        "start": d["start_time"].strftime("%Y-%m-%d %H:%M") if d.get("start_time") else "-",
        "duration": _duration(d),
        "observations": counts.get(d["_id"], 0),
    } for d in docs]


def get_run(run_id: int, db=None) -> dict[str, Any]:
    doc = database(db).runs.find_one({"_id": run_id})
    if doc is None:
        raise LdregError(f"no run with id {run_id}; `ldreg runs` lists the runs there are")
    return doc


def show_run(run_id: int, db=None) -> dict[str, Any]:
    """Config, status, a summary of every metric, and observation counts by kind and type."""
    db = database(db)
    doc = get_run(run_id, db)
    metrics = {}
    for m in db.metrics.find({"run_id": run_id}):
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
        "status": doc.get("status"),
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
    changed = 0
    for m in db.metrics.find({"run_id": run_id}):
        keep = [i for i, s in enumerate(m.get("steps", [])) if s <= after_step]
        if len(keep) == len(m.get("steps", [])):
            continue
        db.metrics.update_one({"_id": m["_id"]}, {"$set": {
            key: [m[key][i] for i in keep] for key in ("steps", "values", "timestamps") if key in m}})
        changed += 1
    return changed


def delete_run(run_id: int, db=None) -> dict[str, int]:
    """Remove the run document, its metrics, its artifacts and its observations together."""
    import gridfs

    db = database(db)
    doc = get_run(run_id, db)
    fs = gridfs.GridFS(db)
    artifacts = 0
    for art in doc.get("artifacts", []) or []:
        if art.get("file_id") is not None:
            fs.delete(art["file_id"])
            artifacts += 1
    return {
        "observations": db[OBSERVATIONS].delete_many({"run_id": run_id}).deleted_count,
        "summaries": db["observation_stats"].delete_many({"run_id": run_id}).deleted_count  # the query cache
        + db["observation_stats_runs"].delete_many({"_id": {"$regex": f"^{run_id}\\|"}}).deleted_count,
        "metrics": db.metrics.delete_many({"run_id": run_id}).deleted_count,
        "artifacts": artifacts,
        "runs": db.runs.delete_one({"_id": run_id}).deleted_count,
    }

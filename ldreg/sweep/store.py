"""A sweep in the database: one document listing its configs, and one claimable entry per config.

``sweeps`` holds the definition (base spec, axes, each config's overrides, executor). ``sweep_configs``
holds one entry per config with its state (queued, running, completed, failed), who holds it and
until when. Workers claim an entry with one atomic ``find_one_and_update``, so any number of
workers, on any number of machines, never take the same config at once. A claim lasts a lease
that the worker renews with its heartbeat: a worker that dies stops renewing, its lease runs out,
and the next worker to ask takes the config over (and resumes its run). Pymongo only: `ldreg sweep
status` and `list` must stay quick, without torch.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pymongo import ASCENDING, ReturnDocument, WriteConcern

from ldreg.errors import LdregError

SWEEPS = "sweeps"
CONFIGS = "sweep_configs"
STATES = ("queued", "running", "completed", "failed")


def now() -> dt.datetime:
    """Naive UTC, as Sacred stores its times (workers on several machines need synchronised clocks)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _journaled(db, name: str):
    return db.get_collection(name, write_concern=WriteConcern(j=True))


def run_tag(sweep_id: str, index: int | None = None) -> str:
    """The tag every run of the sweep carries (``sweep:ID``), and the one naming its config (``sweep:ID:3``)."""
    return f"sweep:{sweep_id}" if index is None else f"sweep:{sweep_id}:{index}"


def save(db, sweep) -> bool:
    """Store ``sweep`` and its config entries unless they exist; True if it is new."""
    created = now()
    result = _journaled(db, SWEEPS).update_one({"_id": sweep.id}, {"$setOnInsert": {
        "name": sweep.name, "created": created, "source": sweep.source, "base": sweep.base,
        # axes as [{key, values}]: swept keys are dotted paths, which MongoDB field names should not be
        "axes": [{"key": k, "values": v} for k, v in sweep.axes.items()],
        "executor": {"name": sweep.executor.name, "options": sweep.executor.options},
        "configs": [{"index": i, "overrides": o} for i, o in enumerate(sweep.configs)],
    }}, upsert=True)
    entries = _journaled(db, CONFIGS)
    entries.create_index([("sweep", ASCENDING), ("index", ASCENDING)])
    for i, overrides in enumerate(sweep.configs):
        entries.update_one({"_id": f"{sweep.id}#{i}"}, {"$setOnInsert": {
            "sweep": sweep.id, "index": i, "overrides": overrides, "state": "queued", "run_id": None,
            "attempts": 0, "worker": None, "token": None, "claimed_until": None, "started": None,
            "finished": None, "error": None}}, upsert=True)
    return result.upserted_id is not None


def axes_of(doc: dict[str, Any]) -> list[str]:
    """The swept keys of a stored sweep, in order."""
    return [a["key"] for a in doc.get("axes") or []]


def requeue_failed(db, sweep_id: str) -> int:
    """FAILED (or interrupted) configs go back to the queue; their run id stays, so they resume."""
    return _journaled(db, CONFIGS).update_many({"sweep": sweep_id, "state": "failed"},
                                               {"$set": {"state": "queued", "error": None}}).modified_count


def get(db, sweep_id: str) -> dict[str, Any]:
    doc = db[SWEEPS].find_one({"_id": sweep_id})
    if doc is None:
        names = [d["_id"] for d in db[SWEEPS].find({}, {"_id": 1}).sort("created", -1).limit(5)]
        raise LdregError(f"no sweep {sweep_id!r}; `ldreg sweep list` lists them"
                         + (f" (latest: {', '.join(names)})" if names else ""))
    return doc


def entries(db, sweep_id: str) -> list[dict[str, Any]]:
    return list(db[CONFIGS].find({"sweep": sweep_id}).sort("index", ASCENDING))


def list_sweeps(db, limit: int = 20) -> list[dict[str, Any]]:
    return list(db[SWEEPS].find({}, {"base": 0}).sort("created", -1).limit(limit))


def claim(db, sweep_id: str, worker: str, lease_s: float) -> dict[str, Any] | None:
    """Atomically take the first queued config, or one whose holder's lease ran out; None if none is left."""
    t = now()
    return _journaled(db, CONFIGS).find_one_and_update(
        {"sweep": sweep_id, "$or": [{"state": "queued"}, {"state": "running", "claimed_until": {"$lt": t}}]},
        {"$set": {"state": "running", "worker": worker, "token": uuid.uuid4().hex, "started": t,
                  "claimed_until": t + dt.timedelta(seconds=lease_s), "error": None},
         "$inc": {"attempts": 1}},
        sort=[("index", ASCENDING)], return_document=ReturnDocument.AFTER)


def renew(db, entry: dict[str, Any], lease_s: float) -> bool:
    """Extend the lease of a claim still held; False if another worker has taken the config over."""
    until = now() + dt.timedelta(seconds=lease_s)
    return _journaled(db, CONFIGS).update_one(
        {"_id": entry["_id"], "token": entry["token"], "state": "running"},
        {"$set": {"claimed_until": until}}).matched_count == 1


def record_run(db, entry: dict[str, Any], run_id: int) -> None:
    _journaled(db, CONFIGS).update_one({"_id": entry["_id"], "token": entry["token"]}, {"$set": {"run_id": run_id}})


def finish(db, entry: dict[str, Any], state: str, run_id: int | None, error: str | None = None) -> bool:
    """Record the end of a claimed config; False if the claim was lost meanwhile (nothing is written)."""
    assert state in ("completed", "failed")
    fields = {"state": state, "finished": now(), "claimed_until": None, "error": error}
    if run_id is not None:
        fields["run_id"] = run_id
    return _journaled(db, CONFIGS).update_one({"_id": entry["_id"], "token": entry["token"]},
                                              {"$set": fields}).matched_count == 1


def counts(rows: list[dict[str, Any]], at: dt.datetime | None = None) -> dict[str, int]:
    """Configs per state; a running config whose lease ran out counts as queued (it is claimable)."""
    at = at or now()
    out = dict.fromkeys(STATES, 0)
    for r in rows:
        state = r.get("state", "queued")
        if state == "running" and r.get("claimed_until") and r["claimed_until"] < at:
            state = "queued"
        out[state] = out.get(state, 0) + 1
    return out


def runs_of(db, sweep_id: str) -> dict[int, list[dict[str, Any]]]:
    """Every run of the sweep, by config index (oldest first): a config's run is found by its tag,
    even when its worker died before it could record the id."""
    prefix = run_tag(sweep_id) + ":"
    out: dict[int, list[dict[str, Any]]] = {}
    fields = {"_id": 1, "status": 1, "meta": 1, "heartbeat": 1, "start_time": 1, "stop_time": 1, "host": 1}
    for doc in db.runs.find({"meta.tags": run_tag(sweep_id)}, fields).sort("_id", 1):
        for tag in (doc.get("meta") or {}).get("tags") or []:
            if tag.startswith(prefix) and tag[len(prefix):].isdigit():
                out.setdefault(int(tag[len(prefix):]), []).append(doc)
    return out

"""Where a sweep stands: configs done, running, failed and queued, their runs, time spent and left.

Read from the database only (pymongo, no torch), so `ldreg sweep status` answers at once, from
any machine that reaches the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ldreg.sweep import store


@dataclass
class SweepStatus:
    sweep_id: str
    name: str
    counts: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float | None = None
    left_s: float | None = None  # None: nothing finished yet to estimate from


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    return (b - a).total_seconds() if a and b else None


def sweep_status(db, sweep_id: str) -> SweepStatus:
    doc = store.get(db, sweep_id)
    entries = store.entries(db, sweep_id)
    runs = store.runs_of(db, sweep_id)
    t = store.now()
    rows, durations = [], []
    for e in entries:
        state = e["state"]
        if state == "running" and e.get("claimed_until") and e["claimed_until"] < t:
            state = "queued (worker lost)"
        ids = [r["_id"] for r in runs.get(e["index"], [])]
        took = _seconds(e.get("started"), e.get("finished") if e["state"] in ("completed", "failed") else t)
        if e["state"] == "completed" and took is not None:
            durations.append(took)
        rows.append({"index": e["index"], "config": " ".join(e["overrides"]), "state": state,
                     "run": e.get("run_id") or (ids[-1] if ids else None), "runs": ids,
                     "seconds": took, "worker": e.get("worker") or "", "error": e.get("error") or ""})
    counts = store.counts(entries, t)
    starts = [e["started"] for e in entries if e.get("started")]
    elapsed = _seconds(min(starts), t if counts["running"] or counts["queued"] else
                       max(e.get("finished") or t for e in entries)) if starts else None
    left = None
    if durations and (counts["queued"] or counts["running"]):
        parallel = max(counts["running"], 1)
        left = sum(durations) / len(durations) * (counts["queued"] + counts["running"]) / parallel
    elif not counts["queued"] and not counts["running"]:
        left = 0.0
    return SweepStatus(sweep_id, doc.get("name", ""), counts, rows, elapsed, left)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(dt.timedelta(seconds=int(round(seconds))))

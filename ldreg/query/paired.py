"""Per-example derived curves: the change since a stage began, and the difference of two types.

A claim like "DPO lowers log pi(y+) by 1.7 nats" is about each example's change, not about the
level: the level varies across examples by tens of nats, so an interval of the level hides a
change of a few. Here every probe bucket is paired, example by example (matched by example id),
with the first bucket of its stage (``change: stage_start``: value(step) - value(stage start)),
and optionally with the bucket of another response type at the same step (``minus: rejected``:
log pi(y+) - log pi(y-), the margin). The mean, sample std, median and n of those per-example
values are written to ``observation_stats`` in the very shape of the plain summaries, marked by
``derived``, so seed pooling, alignment, smoothing and the t interval apply to them unchanged;
the t interval of a paired change is then the paired interval.

Pairing two buckets example by example is a join the embedded server would evaluate row by row,
so it is done here in numpy, once per run: a run's derived summaries are recomputed only when
its number of buckets changed (a late spool flush or a resumed run can add a stage's first probe).
``common_examples``/``example_matrix``/``line_buckets`` are the same pairing for callers that need
the per-example values themselves (the paper's findings test changes over examples).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from ldreg.query import rows as summary_rows
from ldreg.query.pipeline import derived_key
from ldreg.store.collections import OBSERVATIONS, STATS
from ldreg.store.collections import STATS_DERIVED as MARKS  # per (run, kind, quantity, derived): buckets seen


def _per_example(doc: dict[str, Any], quantity: str) -> dict[int, float]:
    values = (doc.get("values") or {}).get(quantity) or []
    return {int(i): float(v) for i, v in zip(doc.get("example_ids") or [], values)
            if v is not None and np.isfinite(v)}


def _difference(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {i: a[i] - b[i] for i in a.keys() & b.keys()}


def common_examples(*example_ids: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The example ids every list holds (sorted), and where each list holds them: the pairing by id."""
    common = np.asarray(sorted(set.intersection(*(set(int(i) for i in ids) for ids in example_ids))), dtype=int)
    where = []
    for ids in example_ids:
        position = {int(e): i for i, e in enumerate(ids)}
        where.append(np.asarray([position[e] for e in common], dtype=int))
    return common, where


def example_matrix(docs: Sequence[dict[str, Any]], quantities: Sequence[str]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Buckets paired example by example: the common example ids and, per quantity, buckets x examples.

    Row i holds ``docs[i]``'s values of the examples every bucket has, in the order of the ids;
    non-finite values are kept (the caller decides what a missing value means).
    """
    ids, where = common_examples(*(d["example_ids"] for d in docs))
    return ids, {q: np.vstack([np.asarray(d["values"][q], dtype=float)[w] for d, w in zip(docs, where)])
                 for q in quantities}


def line_buckets(db, run_id: int, kind: str, probe_set: str, response_type: str, stage_index: int,
                 quantities: Sequence[str]) -> list[dict[str, Any]]:
    """One run's buckets of one type in one stage, in step order, a step stored twice counted once."""
    docs = db[OBSERVATIONS].find(
        {"run_id": run_id, "kind": kind, "probe_set": probe_set, "response_type": response_type,
         "stage_index": stage_index},
        {"_id": 0, "step": 1, "examples_seen": 1, "example_ids": 1, **{f"values.{q}": 1 for q in quantities}})
    by_step = {d["step"]: d for d in docs}  # a resume or a stage's end can store a step twice
    return [by_step[s] for s in sorted(by_step)]


def summary(values: Iterable[float]) -> dict[str, Any]:
    """n, mean, sample std (None below 2, as $stdDevSamp) and median of the finite values."""
    xs = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if xs.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {"n": int(xs.size), "mean": float(xs.mean()), "std": float(xs.std(ddof=1)) if xs.size > 1 else None,
            "median": float(np.median(xs))}


def derive_run(docs: Sequence[dict[str, Any]], quantity: str, minus: str | None, change: str | None
               ) -> list[dict[str, Any]]:
    """The derived per-bucket summaries of one run's buckets (one kind), without ids.

    ``minus``: each bucket of another type minus the bucket of ``minus`` at the same stage, step,
    probing set and update type (the ``minus`` type itself is left out). ``change``: each
    (derived) value minus that example's value at the first probe of the stage.
    """
    values = {d["_id"]: _per_example(d, quantity) for d in docs}
    if minus is not None:
        others = {(d["stage_index"], d["step"], d["probe_set"], d.get("update_type")): values[d["_id"]]
                  for d in docs if d["response_type"] == minus}
        docs = [d for d in docs if d["response_type"] != minus
                and (d["stage_index"], d["step"], d["probe_set"], d.get("update_type")) in others]
        values = {d["_id"]: _difference(values[d["_id"]],
                                        others[(d["stage_index"], d["step"], d["probe_set"], d.get("update_type"))])
                  for d in docs}
    if change is not None:
        lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for d in docs:
            lines[(d["stage_index"], d["probe_set"], d["response_type"], d.get("update_type"))].append(d)
        for line in lines.values():
            start = values[min(line, key=lambda d: d["step"])["_id"]]
            for d in line:
                values[d["_id"]] = _difference(values[d["_id"]], start)
    keep = ("run_id", "kind", "stage", "stage_index", "step", "examples_seen", "probe_set", "response_type",
            "update_type")
    return [{**{f: d.get(f) for f in keep}, "bucket": d["_id"], **summary(values[d["_id"]].values())} for d in docs]


def ensure_derived(db, runs: Sequence[Any], kind: str, quantity: str, minus: str | None, change: str | None
                   ) -> dict[int, dict[str, Any]]:
    """Write the derived summaries of every run not summarised since its buckets last changed.

    Returns the sealed runs' stamps (``rows.stamp``), for reading their derived rows as tables.
    Only ``example_ids``, the key fields and the one quantity's array are read from the buckets.
    A run sealed when last derived, and unchanged since, is not recounted (``rows.sealed_runs``).
    """
    key = derived_key(minus, change)
    if key is None:
        return {}
    stats, marks = db[STATS], db[MARKS]
    sealed = summary_rows.sealed_runs(db, runs)
    known = {m["_id"]: m for m in marks.find({"_id": {"$in": [f"{r.id}|{kind}|{quantity}|{key}" for r in runs]}})}
    stamps = {}
    for run in runs:
        mark_id = f"{run.id}|{kind}|{quantity}|{key}"
        mark = known.get(mark_id)
        if summary_rows.unchanged(mark, run, sealed):
            stamps[run.id] = summary_rows.stamp(mark)
            continue
        fresh = mark is not None and mark.get("run_start") == run.start_time
        total = db[OBSERVATIONS].count_documents({"run_id": run.id, "kind": kind})
        if not (fresh and mark.get("buckets") == total):
            fields = {f: 1 for f in ("stage", "stage_index", "step", "examples_seen", "probe_set", "response_type",
                                     "update_type", "example_ids", "run_id", "kind")}
            docs = list(db[OBSERVATIONS].find({"run_id": run.id, "kind": kind}, {**fields, f"values.{quantity}": 1}))
            rows = derive_run(docs, quantity, minus, change)
            stats.delete_many({"run_id": run.id, "kind": kind, "quantity": quantity, "derived": key})
            if rows:
                stats.insert_many([{**row, "_id": f"{row['bucket']}|{quantity}|{key}", "quantity": quantity,
                                    "derived": key, "run_start": run.start_time} for row in rows])
        mark = summary_rows.new_mark(mark_id, run, total, sealed)
        marks.replace_one({"_id": mark_id}, mark, upsert=True)
        if mark["sealed"]:
            stamps[run.id] = summary_rows.stamp(mark)
    return stamps

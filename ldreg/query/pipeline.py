"""The MongoDB aggregation pipelines behind every curve: statistics computed where the data lives.

A probe bucket holds one array per quantity (500 floats for the authors' probing set) and, since
it was written, its summary per quantity (n, mean, sample std, median). A first query copies
those summaries into ``observation_stats`` (``copy_summaries``), once per bucket and quantity:
buckets never change, so later queries read only these small summaries, and a run still in
progress gets only its new buckets summarised. A bucket stored without a summary (written before
they existed) is reduced inside the server (array operators, no $unwind) and ``$merge``d there. A plain curve is
then read with one fetch a run and aligned in Python (``ldreg.query.rows``: each pass of a
pipeline costs a full pass over the rows in SecantusDB); pooling across runs that differ only in
their seed (``$group``) and the exponential moving average (``$expMovingAvg``) run in the server. Non-finite values (NaN, ±inf, null) are left out of every statistic.
The confidence interval needs a t quantile, so it is added afterwards from (mean, std, n).

Tested on SecantusDB: $filter, $sortArray, $arrayElemAt, $avg/$stdDevSamp on arrays,
$setWindowFields with $min and $expMovingAvg, $switch. (Its $percentile/$median return the
lower middle element, not the midpoint of the two middles, so the median is computed here.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ldreg.store.collections import OBSERVATIONS, STATS  # noqa: F401 (STATS: one summary per bucket and quantity)
from ldreg.store.tables import KEY_FIELDS, SUMMARY_FIELDS, summary_row

CHANGES = ("stage_start",)  # what a change is measured from (see ldreg.query.paired)


def derived_key(minus: str | None, change: str | None) -> str | None:
    """How a derived summary is marked in STATS (None: a plain summary of the stored values)."""
    parts = ([f"minus:{minus}"] if minus else []) + ([f"change:{change}"] if change else [])
    return "|".join(parts) or None


@dataclass
class Pick:
    """Which stored observations a curve is made of: one quantity over some response types.

    ``response_types``/``update_types``/``stages``: ``None`` takes all there are. ``stages``:
    stage indices (0, 1, ...) or stage names as stored (e.g. ``1-dpo``). ``steps``: ``[first,
    last]`` optimiser steps, inclusive. ``label``: how the series is named in a chart (default:
    the response type's display label, prefixed with the quantity when it is not the
    log-probability). ``minus``: per example, this quantity minus the same quantity of another
    response type at the same step (``response_types: [chosen], minus: rejected`` is the margin
    log pi(y+) - log pi(y-)).
    """

    kind: str = "probe"
    quantity: str = "logp_sum"
    response_types: list[str] | None = None
    probe_set: str | None = "train"
    update_types: list[str] | None = None
    stages: list[int | str] | None = None
    steps: list[int] | None = None
    label: str | None = None
    minus: str | None = None

    def validate(self, where: str) -> None:
        from ldreg.errors import SpecError

        if self.minus is not None and self.response_types is not None and self.minus in self.response_types:
            raise SpecError(f"{where}.minus: {self.minus!r} minus itself is zero; take it out of response_types")
        if self.steps is not None and (len(self.steps) != 2 or self.steps[0] > self.steps[1]):
            raise SpecError(f"{where}.steps: expected [first, last] with first <= last, got {self.steps}")


@dataclass
class Aggregation:
    """How buckets become curve points.

    ``seeds``: pool runs that differ only in their seed (statistics across the per-run means).
    ``align``: ``null`` (x = examples seen), ``stage`` (each stage's x starts at 0), ``last``
    (each run's last stage), or a stage index or loss name (x = 0 where that stage begins in each run, e.g. ``dpo`` lines up
    SFT-then-DPO runs where DPO starts; earlier stages get negative x).
    ``ema``: smoothing weight w in [0, 1): s_t = w s_(t-1) + (1 - w) x_t, restarted at each
    stage (the authors' and TensorBoard's form; 0 or null: none).
    ``confidence``: the level of the t interval around the mean.
    ``change``: ``stage_start`` draws each example's change since the first probe of its stage
    (value(step) - value(stage start), paired by example id), so the band is the paired interval
    of the change; ``null`` draws the level.
    """

    seeds: bool = False
    align: int | str | None = None
    ema: float | None = None
    confidence: float = 0.95
    change: str | None = None

    def validate(self, where: str) -> None:
        from ldreg.errors import SpecError

        if self.change is not None and self.change not in CHANGES:
            raise SpecError(f"{where}.change: must be one of {', '.join(CHANGES)} or null (the level), "
                            f"not {self.change!r}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise SpecError(f"{where}.ema: must be in [0, 1) (0.6 smooths lightly, 0.9 strongly), got {self.ema}")
        if not 0 < self.confidence < 1:
            raise SpecError(f"{where}.confidence: must be in (0, 1), e.g. 0.95, got {self.confidence}")


def match_stage(run_ids: Sequence[int], pick: Pick) -> dict[str, Any]:
    """The $match on indexed fields (run_id, kind, response_type, step) plus the rest of the pick."""
    query: dict[str, Any] = {"run_id": {"$in": [int(r) for r in run_ids]}, "kind": pick.kind}
    if pick.response_types is not None:
        query["response_type"] = {"$in": list(pick.response_types)}
    if pick.probe_set is not None:
        query["probe_set"] = pick.probe_set
    if pick.update_types is not None:
        query["update_type"] = {"$in": list(pick.update_types)}
    if pick.stages is not None:
        indices = [s for s in pick.stages if isinstance(s, int)]
        names = [s for s in pick.stages if isinstance(s, str)]
        query["$or"] = ([{"stage_index": {"$in": indices}}] if indices else []) + ([{"stage": {"$in": names}}] if names else [])
    if pick.steps is not None:
        query["step"] = {"$gte": int(pick.steps[0]), "$lte": int(pick.steps[1])}
    return {"$match": query}


def _finite(path: str) -> dict[str, Any]:
    """The array at ``path`` without NaN, ±inf and nulls (a NaN would poison $avg)."""
    return {"$filter": {"input": {"$ifNull": [path, []]}, "as": "v",
                        "cond": {"$and": [{"$gt": ["$$v", float("-inf")]}, {"$lt": ["$$v", float("inf")]}]}}}


def _median(sorted_path: str, n_path: str) -> dict[str, Any]:
    """The midpoint of the two middle elements of a sorted array (numpy's median); null when empty."""
    lo = {"$floor": {"$divide": [{"$subtract": [n_path, 1]}, 2]}}
    hi = {"$ceil": {"$divide": [{"$subtract": [n_path, 1]}, 2]}}
    return {"$cond": [{"$gt": [n_path, 0]},
                      {"$avg": [{"$arrayElemAt": [sorted_path, {"$toInt": lo}]},
                                {"$arrayElemAt": [sorted_path, {"$toInt": hi}]}]},
                      None]}


def _is_finite(expr: Any) -> dict[str, Any]:
    return {"$and": [{"$gt": [expr, float("-inf")]}, {"$lt": [expr, float("inf")]}]}


def bucket_stats_stages(quantity: str) -> list[dict[str, Any]]:
    """Per bucket: n, mean, sample std and median of ``values.<quantity>`` over its examples.

    Filtering element by element is slow in a server that evaluates expressions one at a time,
    so the array is filtered only when its plain mean shows a NaN or an infinity in it.
    """
    keep = {f: 1 for f in ("run_id", "kind", "stage", "examples_seen") + KEY_FIELDS}
    raw = f"$values.{quantity}"
    return [
        {"$project": {**keep, "raw": {"$ifNull": [raw, []]}, "plain": {"$avg": raw}}},
        {"$project": {**keep, "xs": {"$cond": [_is_finite("$plain"), "$raw", _finite("$raw")]}}},
        {"$project": {**keep, "n": {"$size": "$xs"}, "mean": {"$avg": "$xs"}, "std": {"$stdDevSamp": "$xs"},
                      "sorted": {"$sortArray": {"input": "$xs", "sortBy": 1}}}},
        {"$project": {**keep, "n": 1, "mean": 1, "std": 1, "median": _median("$sorted", "$n")}},
    ]


def summarise_pipeline(run_id: int, kind: str, quantity: str, run_start: Any, skip: Sequence[str]) -> list[dict[str, Any]]:
    """Summarise one run's buckets of ``kind`` not in ``skip`` (those summarised, or copied by
    ``copy_summaries``) into STATS ($merge): buckets written without their ``summary``.

    A summary's ``_id`` is its bucket's id and the quantity; ``run_start`` ties it to the run
    (Sacred reuses the id of a deleted latest run, so a summary of the old run must not pass).
    """
    match: dict[str, Any] = {"run_id": int(run_id), "kind": kind}
    if skip:
        match["_id"] = {"$nin": list(skip)}
    return [
        {"$match": match},
        *bucket_stats_stages(quantity),
        {"$addFields": {"bucket": "$_id", "quantity": quantity, "run_start": run_start,
                        "_id": {"$concat": ["$_id", "|", quantity]}}},
        {"$merge": {"into": STATS, "on": "_id", "whenMatched": "replace", "whenNotMatched": "insert"}},
    ]


def copy_summaries(db, run_id: int, kind: str, quantity: str, run_start: Any, skip: Sequence[str]
                   ) -> list[dict[str, Any]]:
    """Copy into STATS the summaries that buckets carry from the moment they were written
    (``summary.<quantity>``, see ldreg.store.documents), for those not yet there; return the
    summaries copied, as stored (their ``bucket``: the bucket's id)."""
    docs = read_summaries(db, run_id, kind, quantity, run_start, skip)[0]
    store_summaries(db, docs)
    return docs


def read_summaries(db, run_id: int, kind: str, quantity: str, run_start: Any, skip: Sequence[str]
                   ) -> tuple[list[dict[str, Any]], int]:
    """The summaries buckets carry, shaped as STATS stores them, for the buckets not in ``skip``,
    and how many buckets were read (with ``skip`` empty: all of the run's buckets of ``kind``).

    Only a few numbers a bucket are read, so this is no pass over the arrays; buckets without
    the field (written before it existed) are left to ``summarise_pipeline``. The filter on the
    field is applied here: an ``$exists`` on a nested path makes the server scan the collection.
    """
    match: dict[str, Any] = {"run_id": int(run_id), "kind": kind}
    if skip:
        match["_id"] = {"$nin": list(skip)}
    projection = {**{f: 1 for f in SUMMARY_FIELDS}, f"summary.{quantity}": 1}
    docs, seen = [], 0
    for bucket in db[OBSERVATIONS].find(match, projection):
        seen += 1
        row = summary_row(bucket, quantity)
        if row is not None:
            docs.append({**row, "run_start": run_start, "_id": f"{bucket['_id']}|{quantity}"})
    return docs, seen


def store_summaries(db, docs: Sequence[dict[str, Any]]) -> None:
    """Insert summaries (``read_summaries``) into STATS; those another query stored first are kept."""
    from pymongo.errors import BulkWriteError

    if not docs:
        return
    try:
        db[STATS].insert_many([dict(d) for d in docs], ordered=False)
    except BulkWriteError as exc:  # another query copied some first: the same summaries, keep theirs
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise


def _by_run(values: Mapping[int, Any], default: Any = None) -> dict[str, Any]:
    """A per-run constant inside the pipeline: ``$switch`` on run_id."""
    return {"$switch": {"branches": [{"case": {"$eq": ["$run_id", int(r)]}, "then": v} for r, v in values.items()],
                        "default": default}}


def anchored_x(anchors: Mapping[tuple[int, int | None], float]) -> Any:
    """examples_seen minus the anchor of the row's run (key (run, None)) or of its run and stage.

    Anchors come from one cheap $group beforehand (``anchors_pipeline``): a window over each
    run would cost a pass over the partition per row on a server that evaluates row by row.
    A run without an anchor keeps x = examples_seen.
    """
    per_stage = any(stage is not None for _, stage in anchors)
    branches = []
    for (run, stage), start in anchors.items():
        case: Any = {"$eq": ["$run_id", int(run)]}
        if per_stage:
            case = {"$and": [case, {"$eq": ["$stage_index", int(stage)]}]}
        branches.append({"case": case, "then": start})
    if not branches:
        return "$examples_seen"
    return {"$subtract": ["$examples_seen", {"$switch": {"branches": branches, "default": 0}}]}


def anchors_pipeline(run_ids: Sequence[int], kind: str, quantity: str, anchor_stage: Mapping[int, int] | None
                     ) -> list[dict[str, Any]]:
    """Each run's first examples_seen in its anchor stage (or, with None, in every stage)."""
    match: dict[str, Any] = {"run_id": {"$in": [int(r) for r in run_ids]}, "kind": kind, "quantity": quantity}
    if anchor_stage is not None:  # one $in, not an $or per run: the server tests every clause on every row
        match["stage_index"] = {"$in": sorted({int(i) for i in anchor_stage.values()})}
    return [{"$match": match},
            {"$group": {"_id": {"run": "$run_id", "stage": "$stage_index"}, "start": {"$min": "$examples_seen"}}}]


def across_seed_stages(group_of: Mapping[int, str]) -> list[dict[str, Any]]:
    """Pool runs of one seed group: statistics of the per-run means; n is the number of runs."""
    key = {"group": "$group", **{f: f"${f}" for f in KEY_FIELDS}}
    return [
        {"$addFields": {"group": _by_run(group_of)}},
        {"$group": {"_id": key, "run_id": {"$min": "$run_id"}, "stage": {"$first": "$stage"},
                    "examples_seen": {"$avg": "$examples_seen"}, "x": {"$avg": "$x"},
                    "mean": {"$avg": "$mean"}, "std": {"$stdDevSamp": "$mean"}, "n": {"$sum": 1},
                    "n_examples": {"$avg": "$n"}, "means": {"$push": "$mean"}}},
        {"$project": {"_id": 0, "group": "$_id.group", **{f: f"$_id.{f}" for f in KEY_FIELDS},
                      "run_id": 1, "stage": 1, "examples_seen": 1, "x": 1, "mean": 1, "std": 1, "n": 1,
                      "n_examples": 1, "sorted": {"$sortArray": {"input": "$means", "sortBy": 1}}}},
        {"$addFields": {"median": _median("$sorted", "$n")}},
        {"$project": {"sorted": 0}},
    ]


def ema_stages(weight: float, series: str) -> list[dict[str, Any]]:
    """s_t = w s_(t-1) + (1 - w) x_t over steps, per series and stage ($expMovingAvg, alpha = 1 - w)."""
    alpha = 1.0 - float(weight)
    partition = {"series": f"${series}", **{f: f"${f}" for f in KEY_FIELDS if f != "step"}}
    return [{"$setWindowFields": {"partitionBy": partition, "sortBy": {"step": 1}, "output": {
        f: {"$expMovingAvg": {"input": f"${f}", "alpha": alpha}} for f in ("mean", "median", "std")}}}]


def curve_pipeline(run_ids: Sequence[int], pick: Pick, aggregation: Aggregation, *,
                   anchors: Mapping[tuple[int, int | None], float] | None = None,
                   group_of: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """One pick's curves from the per-bucket summaries (STATS): match and align, pool seeds, smooth."""
    match = match_stage(run_ids, pick)
    match["$match"]["quantity"] = pick.quantity
    match["$match"]["derived"] = derived_key(pick.minus, aggregation.change)  # None: the plain summaries
    # Without pooling, x is examples_seen less the anchor, subtracted by the caller (``shift_x``):
    # a $switch over every run costs a test per run on every row in a server that evaluates row by row.
    pooled = aggregation.align is not None and aggregation.seeds
    x = anchored_x(anchors or {}) if pooled else "$examples_seen"
    fields = ("run_id", "stage", "examples_seen", "n", "mean", "std", "median") + KEY_FIELDS
    stages = [match, {"$project": {"_id": 0, "x": x, **{f: 1 for f in fields}}}]
    series = "run_id"
    if aggregation.seeds:
        stages += across_seed_stages(group_of or {})
        series = "group"
    if aggregation.ema:
        stages += ema_stages(aggregation.ema, series)
    return stages  # sorted by the caller: a $sort is a full extra pass on a row-by-row server


def shift_x(rows: list[dict[str, Any]], anchors: Mapping[tuple[int, int | None], float]) -> None:
    """``anchored_x`` done on the rows the server returned (runs not pooled): x = examples_seen
    less the anchor of the row's run (or of its run and stage); a run without one keeps x."""
    per_stage = any(stage is not None for _, stage in anchors)
    for row in rows:
        start = anchors.get((row["run_id"], row.get("stage_index") if per_stage else None))
        if start is None and per_stage:
            start = 0  # as anchored_x's $switch default
        if start is not None:
            row["x"] = row["examples_seen"] - start


@dataclass
class Recorded:
    """What the selected runs hold for one kind: response types, probing sets, update types, stages."""

    response_types: set[str] = field(default_factory=set)
    probe_sets: set[str] = field(default_factory=set)
    update_types: set[str] = field(default_factory=set)
    stages: set[str] = field(default_factory=set)
    quantities: set[str] = field(default_factory=set)


def recorded(db, run_ids: Sequence[int], kind: str, quantity: str | None = None) -> Recorded:
    """What the runs hold of ``kind``: the quantities from one bucket's value names and, given a
    ``quantity`` already summarised, the response types, sets and stages from its summaries."""
    ids = [int(r) for r in run_ids]
    out = Recorded()
    first = None
    for run_id in ids:  # equality on run_id is served by the index; $in makes this server scan
        first = db[OBSERVATIONS].find_one({"run_id": run_id, "kind": kind}, {"values": 1})
        if first is not None:
            break
    else:
        return out
    out.quantities.update(first.get("values") or {})
    if quantity is None:
        return out  # grouping the raw buckets reads every array: only the summaries are grouped
    match = {"run_id": {"$in": ids}, "kind": kind, "quantity": quantity}
    keys = {f: f"${f}" for f in ("response_type", "probe_set", "update_type", "stage")}
    return recorded_in((row["_id"] for row in db[STATS].aggregate([{"$match": match}, {"$group": {"_id": keys}}])), out)


def recorded_in(rows: Iterable[Mapping[str, Any]], out: Recorded) -> Recorded:
    """``out`` with the response types, probing sets, update types and stages the rows hold."""
    for row in rows:
        out.response_types.add(row.get("response_type"))
        out.probe_sets.add(row.get("probe_set"))
        out.stages.add(row.get("stage"))
        if row.get("update_type") is not None:
            out.update_types.add(row["update_type"])
    return out

"""The MongoDB aggregation pipelines behind every curve: statistics computed where the data lives.

A probe bucket holds one array per quantity (500 floats for the authors' probing set). The
pipeline reduces each bucket to mean, median, sample std and count inside the server (array
operators, no $unwind), so only one small row per (run, step, response type) crosses the wire.
Optional stages, all in the server too: the step of a stage's start (``$setWindowFields``) to
align runs, a ``$group`` across runs that differ only in their seed, and an exponential moving
average (``$expMovingAvg``). Non-finite values (NaN, ±inf, null) are left out of every statistic.
The confidence interval needs a t quantile, so it is added afterwards from (mean, std, n).

Tested on SecantusDB: $filter, $sortArray, $arrayElemAt, $avg/$stdDevSamp on arrays,
$setWindowFields with $min and $expMovingAvg, $switch. (Its $percentile/$median return the
lower middle element, not the midpoint of the two middles, so the median is computed here.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

OBSERVATIONS = "observations"
KEY_FIELDS = ("stage_index", "step", "probe_set", "response_type", "update_type")


@dataclass
class Pick:
    """Which stored observations a curve is made of: one quantity over some response types.

    ``response_types``/``update_types``/``stages``: ``None`` takes all there are. ``stages``:
    stage indices (0, 1, ...) or stage names as stored (e.g. ``1-dpo``). ``steps``: ``[first,
    last]`` optimiser steps, inclusive. ``label``: how the series is named in a chart (default:
    the response type, prefixed with the quantity when it is not the log-probability).
    """

    kind: str = "probe"
    quantity: str = "logp_sum"
    response_types: list[str] | None = None
    probe_set: str | None = "train"
    update_types: list[str] | None = None
    stages: list[int | str] | None = None
    steps: list[int] | None = None
    label: str | None = None

    def validate(self, where: str) -> None:
        from ldreg.errors import SpecError

        if self.steps is not None and (len(self.steps) != 2 or self.steps[0] > self.steps[1]):
            raise SpecError(f"{where}.steps: expected [first, last] with first <= last, got {self.steps}")


@dataclass
class Aggregation:
    """How buckets become curve points.

    ``seeds``: pool runs that differ only in their seed (statistics across the per-run means).
    ``align``: ``null`` (x = examples seen), ``stage`` (each stage's x starts at 0), or a stage
    index or loss name (x = 0 where that stage begins in each run, e.g. ``dpo`` lines up
    SFT-then-DPO runs where DPO starts; earlier stages get negative x).
    ``ema``: smoothing weight w in [0, 1): s_t = w s_(t-1) + (1 - w) x_t, restarted at each
    stage (the authors' and TensorBoard's form; 0 or null: none).
    ``confidence``: the level of the t interval around the mean.
    """

    seeds: bool = False
    align: int | str | None = None
    ema: float | None = None
    confidence: float = 0.95

    def validate(self, where: str) -> None:
        from ldreg.errors import SpecError

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


def bucket_stats_stages(quantity: str) -> list[dict[str, Any]]:
    """Per bucket: n, mean, sample std and median of ``values.<quantity>`` over its examples."""
    keep = {f: 1 for f in ("run_id", "stage", "examples_seen") + KEY_FIELDS}
    return [
        {"$project": {**keep, "xs": _finite(f"$values.{quantity}")}},
        {"$project": {**keep, "n": {"$size": "$xs"}, "mean": {"$avg": "$xs"}, "std": {"$stdDevSamp": "$xs"},
                      "sorted": {"$sortArray": {"input": "$xs", "sortBy": 1}}}},
        {"$project": {**keep, "n": 1, "mean": 1, "std": 1, "median": _median("$sorted", "$n")}},
    ]


def _by_run(values: Mapping[int, Any], default: Any = None) -> dict[str, Any]:
    """A per-run constant inside the pipeline: ``$switch`` on run_id."""
    return {"$switch": {"branches": [{"case": {"$eq": ["$run_id", int(r)]}, "then": v} for r, v in values.items()],
                        "default": default}}


def align_stages(anchor_stage: Mapping[int, int] | None) -> list[dict[str, Any]]:
    """x = examples_seen minus the first examples_seen of the anchor stage (per run, or per stage).

    ``anchor_stage``: run id -> the stage index whose start is x = 0; ``None``: each stage's own.
    A run without that stage keeps x = examples_seen.
    """
    if anchor_stage is None:
        partition: Any = {"run_id": "$run_id", "stage_index": "$stage_index"}
        start: Any = "$examples_seen"
    else:
        partition = "$run_id"
        start = {"$cond": [{"$eq": ["$stage_index", _by_run(anchor_stage, -1)]}, "$examples_seen", None]}
    return [
        {"$setWindowFields": {"partitionBy": partition, "sortBy": {"step": 1},
                              "output": {"anchor": {"$min": start, "window": {"documents": ["unbounded", "unbounded"]}}}}},
        {"$addFields": {"x": {"$subtract": ["$examples_seen", {"$ifNull": ["$anchor", 0]}]}}},
        {"$project": {"anchor": 0}},
    ]


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
                   anchor_stage: Mapping[int, int] | None = None, group_of: Mapping[int, str] | None = None
                   ) -> list[dict[str, Any]]:
    """The whole pipeline for one pick: match, per-bucket stats, align, pool seeds, smooth, sort."""
    stages = [match_stage(run_ids, pick), *bucket_stats_stages(pick.quantity)]
    if aggregation.align is not None:
        stages += align_stages(None if aggregation.align == "stage" else anchor_stage)
    else:
        stages.append({"$addFields": {"x": "$examples_seen"}})
    series = "run_id"
    if aggregation.seeds:
        stages += across_seed_stages(group_of or {})
        series = "group"
    if aggregation.ema:
        stages += ema_stages(aggregation.ema, series)
    stages.append({"$sort": {series: 1, "response_type": 1, "update_type": 1, "step": 1, "stage_index": 1}})
    return stages


@dataclass
class Recorded:
    """What the selected runs hold for one kind: response types, probing sets, update types, stages."""

    response_types: set[str] = field(default_factory=set)
    probe_sets: set[str] = field(default_factory=set)
    update_types: set[str] = field(default_factory=set)
    stages: set[str] = field(default_factory=set)
    quantities: set[str] = field(default_factory=set)


def recorded(db, run_ids: Sequence[int], kind: str) -> Recorded:
    """One small $group over the indexed fields; quantities from one bucket's value names."""
    out = Recorded()
    for row in db[OBSERVATIONS].aggregate([
        {"$match": {"run_id": {"$in": [int(r) for r in run_ids]}, "kind": kind}},
        {"$group": {"_id": {"r": "$response_type", "p": "$probe_set", "u": "$update_type", "s": "$stage"}}},
    ]):
        key = row["_id"]
        out.response_types.add(key.get("r"))
        out.probe_sets.add(key.get("p"))
        out.stages.add(key.get("s"))
        if key.get("u") is not None:
            out.update_types.add(key["u"])
    if out.response_types:
        for row in db[OBSERVATIONS].aggregate([
            {"$match": {"run_id": {"$in": [int(r) for r in run_ids]}, "kind": kind}}, {"$limit": 1},
            {"$project": {"names": {"$objectToArray": "$values"}}},
            {"$project": {"names": {"$map": {"input": "$names", "in": "$$this.k"}}}},
        ]):
            out.quantities.update(row["names"])
    return out

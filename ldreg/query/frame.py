"""From selected runs to a tidy frame: one row per run (or seed group), step, series and statistic.

This is the query layer's Python API::

    runs = select_runs(db, name="sft-dpo", latest=3)
    frame = curves_frame(db, runs, [Pick(quantity="logp_sum", response_types=["chosen", "rejected"])],
                         Aggregation(align="dpo", ema=0.6))

Columns: run_id, run (the legend label: what differs between the runs), stage, stage_index, step,
examples_seen, x (aligned examples seen), probe_set, response_type, update_type, quantity,
response_label and update_label (the types' display labels, see ``ldreg.query.names``),
series (what a chart calls the curve, in those labels), minus (the type
subtracted per example, or None), change (``stage_start`` when values are per-example changes
since the stage's first probe, or None), mean, median, std, ci_low, ci_high, n (examples, or runs
when seeds are pooled). Asking for what no selected run recorded is an error that lists what
they did record.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ldreg.query.errors import QueryError
from ldreg.query.labels import run_labels, seed_groups
from ldreg.query.names import difference_label, label_of, response_labels
from ldreg.query.paired import ensure_derived
from ldreg.query import rows as summary_rows
from ldreg.store import tables
from ldreg.query import writeback
from ldreg.query.pipeline import (OBSERVATIONS, STATS, Aggregation, Pick, Recorded, anchors_pipeline, curve_pipeline,
                                  derived_key, read_summaries, recorded, shift_x, store_summaries,
                                  summarise_pipeline)
from ldreg.query.select import RunInfo
from ldreg.store.collections import STATS_SUMMARISED, STATS_TABLES
from ldreg.errors import closest  # not ldreg.registry: that imports torch

COLUMNS = ["run_id", "run", "stage", "stage_index", "step", "examples_seen", "x", "probe_set", "response_type",
           "update_type", "response_label", "update_label", "quantity", "series", "minus", "change", "mean", "median",
           "std", "ci_low", "ci_high", "n"]

# How a quantity is named on an axis: (what it is, its unit).
QUANTITIES = {
    "logp_sum": ("log π(y|x)", "nats, summed over tokens"),
    "logp_mean": ("log π(y|x) per token", "nats"),
    "argmax_logp": ("argmax confidence, log π of the greedy tokens", "nats, summed"),
    "nonargmax": ("log(1 - p*) summed", "nats"),
    "n_tokens": ("length", "tokens"),
    "a_norm": ("‖A‖ per token", ""),
    "a_norm_authors": ("‖A‖ per token (authors' form)", ""),
    "g_norm": ("‖G‖ per token", ""),
    "energy": ("energy mean(1 - π(y))", ""),
    "delta_logp": ("Δ log π after one step", "nats"),
    "lbk": ("LBK |Δ| / (‖A_o‖ ‖G_u‖)", ""),
    "lbk_signed": ("Δ / (‖A_o‖ ‖G_u‖)", ""),
}
QUANTITY_LABELS = {q: f"{what} ({unit})" if unit else what for q, (what, unit) in QUANTITIES.items()}
_SHORT = {"argmax_logp": "argmax confidence", "logp_mean": "per-token log π"}


def quantity_label(quantity: str) -> str:
    return QUANTITY_LABELS.get(quantity, quantity)


def series_label(pick: Pick, response_type: str, update_type: str | None = None,
                 labels: dict[str, str] | None = None) -> str:
    """``y+`` for log-probabilities; ``argmax confidence (on y+)`` for other quantities; ``y+ − y-``
    for a difference. ``labels``: type name -> display label (default: the names)."""
    labels = labels or {}
    name = difference_label(response_type, pick.minus, labels) if pick.minus else label_of(response_type, labels)
    if pick.label:
        return pick.label if not pick.response_types or len(pick.response_types) == 1 else f"{pick.label} ({name})"
    if update_type is not None:
        name = f"{label_of(update_type, labels)} → {name}"
    if pick.quantity == "logp_sum":
        return name
    return f"{_SHORT.get(pick.quantity, pick.quantity)} (on {name})"


def _stage_anchor(runs: Sequence[RunInfo], align: int | str) -> dict[int, int]:
    """Run id -> the stage index to align at: an index as given, "last", or the first stage with that loss/name."""
    if isinstance(align, int):
        return {r.id: align for r in runs}
    if align == "last":
        return {r.id: max(len(r.config.get("stages") or []) - 1, 0) for r in runs}
    anchor = {}
    for run in runs:
        stages = run.config.get("stages") or []
        for i, stage in enumerate(stages):
            if isinstance(stage, dict) and align in (stage.get("loss"), stage.get("name")):
                anchor[run.id] = i
                break
    if not anchor:
        losses = sorted({str(s.get("loss")) for r in runs for s in r.config.get("stages") or [] if isinstance(s, dict)})
        raise QueryError(f"aggregate.align: no selected run has a stage {align!r}{closest(str(align), losses)}; "
                         f"their stages' losses: {', '.join(losses) or 'none recorded'}; or use a stage index, "
                         f"'stage' or null")
    return anchor


def _kinds(db, ids: Sequence[int]) -> list[str]:
    return sorted(row["_id"] for row in db[OBSERVATIONS].aggregate([
        {"$match": {"run_id": {"$in": list(ids)}}}, {"$group": {"_id": "$kind"}}]))


def _summarised_before(db, ids: Sequence[int], kind: str, quantity: str) -> bool:
    """Whether any of the runs had buckets of ``kind`` summarised for ``quantity``: its marks, or a
    table its sink wrote, read by id (finding one bucket costs the server a pass over the run's
    index entries: 0.07 s a run of 560 buckets, 0.7 s one of 5,600)."""
    marks = db[STATS_SUMMARISED].find({"_id": {"$in": [f"{i}|{kind}|{quantity}" for i in ids]}}, {"buckets": 1})
    if any(m.get("buckets") for m in marks):
        return True
    ids_of_tables = {"_id": {"$in": [tables.table_id(i, kind, quantity) for i in ids]}}
    return db[STATS_TABLES].find_one(ids_of_tables, {"_id": 1}) is not None


def check_pick(db, runs: Sequence[RunInfo], pick: Pick, where: str = "observe", summarised: bool = False,
               rows: Sequence[dict] | None = None) -> None:
    """Raise QueryError naming what the pick asks for and no selected run recorded.

    Before summarising: the kind and the quantity (from one bucket); after: the rest, from the
    runs' summaries (``rows``, fetched once by ``ldreg.query.rows.fetch``, or grouped in the server).
    """
    ids = [r.id for r in runs]
    if summarised and rows:  # the quantity is there: its summaries are
        have = summary_rows.recorded_in(rows, Recorded(quantities={pick.quantity}))
    elif not summarised and _summarised_before(db, ids, pick.kind, pick.quantity):
        return  # a run's buckets of this kind and quantity were summarised: both are recorded
    elif summarised and rows is not None:
        have = summary_rows.recorded_in(rows, recorded(db, ids, pick.kind))
    else:
        have = recorded(db, ids, pick.kind, pick.quantity if summarised else None)
    run_list = ", ".join(f"#{i}" for i in ids)
    if not have.quantities:
        raise QueryError(f"{where}.kind: no selected run ({run_list}) recorded {pick.kind!r} observations; "
                         f"they recorded: {', '.join(_kinds(db, ids)) or 'nothing (did the runs store observations?)'}")
    checks = [("quantity", [pick.quantity], have.quantities)]
    if summarised:
        checks += [("response_types", pick.response_types, have.response_types),
                   ("minus", [pick.minus] if pick.minus is not None else None, have.response_types),
                   ("update_types", pick.update_types, have.update_types),
                   ("probe_set", [pick.probe_set] if pick.probe_set is not None else None, have.probe_sets)]
    for name, wanted, there in checks:
        for value in wanted or []:
            if value not in there:
                raise QueryError(f"{where}.{name}: no selected run ({run_list}) recorded {value!r} for kind "
                                 f"{pick.kind!r}{closest(str(value), sorted(there))}; recorded: {', '.join(sorted(there))}")


def t_interval(mean: pd.Series, std: pd.Series, n: pd.Series, confidence: float) -> tuple[pd.Series, pd.Series]:
    """mean ± t_{(1+c)/2, n-1} std / sqrt(n); NaN where n < 2."""
    from scipy.stats import t

    n = n.astype(float)
    dof = (n - 1).where(n >= 2)
    half = pd.Series(t.ppf((1 + confidence) / 2, dof.to_numpy()), index=mean.index) * std / np.sqrt(n)
    return mean - half, mean + half


SUMMARISED = STATS_SUMMARISED  # per (run, kind, quantity): how many buckets are summarised


def ensure_summaries(db, runs: Sequence[RunInfo], kind: str, quantity: str) -> int:
    """Summarise every bucket of these runs not summarised yet, stored as one row per bucket when
    this returns (what the server's pipelines read); return how many (``summaries``)."""
    return summaries(db, runs, kind, quantity, stats_rows=True)[0]


def summaries(db, runs: Sequence[RunInfo], kind: str, quantity: str, defer: bool = False, stats_rows: bool = False
              ) -> tuple[int, list[dict]]:
    """Summarise every bucket of these runs not summarised yet; return how many, and the runs'
    plain summaries: those copied just now as they are, the rest fetched (``ldreg.query.rows``).
    ``defer``: store the copies on a thread while the caller draws (``ldreg.query.writeback``).

    Buckets carry their summaries (written with them), which are copied; older buckets are
    reduced in the server. A run is recounted (counting touches every bucket of the run) unless
    it was sealed, and unchanged, when last summarised (``rows.sealed_runs``): buckets written late,
    by a spool flush after the run ended or by a resumed run, are summarised too, and only the new
    buckets are.

    A sealed run's summaries are kept as its table (``ldreg.store.tables``: one document): the one
    its sink wrote at the run's end, read instead of its buckets, or one written here. Such a run's
    summaries are stored only so, not also as a row per bucket, which cost a first query more than
    reading them; ``stats_rows`` asks for the rows too (the server's pooling and smoothing
    pipelines read rows), made from the table.
    """
    writeback.wait()  # a copy still being stored would race with the deletes and marks below
    stats, marks = db[STATS], db[SUMMARISED]
    known = {m["_id"]: m for m in marks.find({"_id": {"$in": [f"{r.id}|{kind}|{quantity}" for r in runs]}})}
    sealed = summary_rows.sealed_runs(db, runs)
    if any(not (k in known and known[k].get("sealed")) for k in (f"{r.id}|{kind}|{quantity}" for r in runs)):
        stats.create_index(["run_id", "kind", "quantity", "response_type", "step"])  # before the deletes below
    done, rows, deferred = 0, [], []
    for run in runs:
        key = f"{run.id}|{kind}|{quantity}"
        mark = known.get(key)
        fresh = mark is not None and mark.get("run_start") == run.start_time
        if summary_rows.unchanged(mark, run, sealed):
            stamp = mark.get("table") or summary_rows.stamp(mark)  # the sink's table keeps the sink's stamp
            if mark.get("rows", True):
                rows.extend(summary_rows.fetch(db, [run.id], kind, quantity, stamps={run.id: stamp}))
                continue
            table = tables.read_table(db, run.id, kind, quantity, None, stamp)
            if table is not None:
                if stats_rows:
                    store_summaries(db, summary_rows.as_stored(table, quantity, run.start_time))
                    marks.update_one({"_id": key}, {"$set": {"rows": True}})
                rows.extend(table)
                continue
        if mark is not None and not mark.get("rows", True):
            fresh = False  # kept only as a table, now gone or out of date: summarised anew
        if not fresh and run.id in sealed:  # the table the run's sink wrote: every bucket's summary
            found = tables.read_sink_table(db, run.id, kind, quantity, run.start_time)
            if found is not None:
                table, total = found
                mark = summary_rows.new_mark(key, run, total, sealed, rows=stats_rows,  # the table is read
                                             table=tables.sink_stamp(run.start_time, total))  # by its own stamp
                if stats_rows:
                    stats.delete_many({"run_id": run.id, "kind": kind, "quantity": quantity, "derived": None})
                    store_summaries(db, summary_rows.as_stored(table, quantity, run.start_time))
                marks.replace_one({"_id": key}, mark, upsert=True)
                rows.extend(table)
                continue
        mine = {"run_id": run.id, "kind": kind, "quantity": quantity, "derived": None}  # not paired.py's
        first_row = len(rows)
        if not fresh:
            stats.delete_many(mine)
        have = mark.get("buckets", 0) if fresh else 0
        copied: list[dict] = []
        if have:
            total = db[OBSERVATIONS].count_documents({"run_id": run.id, "kind": kind})
        else:  # nothing summarised yet: every bucket is read, and counted as it is read
            copied, total = read_summaries(db, run.id, kind, quantity, run.start_time, [])
        later = table_only = False
        if total != have:
            if have:
                skip = [d["bucket"] for d in stats.find(mine, {"bucket": 1, "_id": 0})]
                copied = read_summaries(db, run.id, kind, quantity, run.start_time, skip)[0]
            else:
                skip = []
            table_only = (not have and not stats_rows and run.id in sealed and len(copied) == total
                          and tables.fits(copied))
            later = defer and have + len(copied) == total
            if not (later or table_only):
                store_summaries(db, copied)
            if have + len(copied) < total:  # buckets stored without their summary: reduced in the server
                list(db[OBSERVATIONS].aggregate(summarise_pipeline(run.id, kind, quantity, run.start_time,
                                                                   skip + [d["bucket"] for d in copied]),
                                                allowDiskUse=True))
            done += total - have
        if later:  # stored on a thread: the summaries stored before, and the copies
            rows.extend((summary_rows.fetch(db, [run.id], kind, quantity) if have else []) + copied)
        elif not have and len(copied) == total:
            rows.extend(copied)  # every summary of the run was copied just now: none to read back
        else:
            rows.extend(summary_rows.fetch(db, [run.id], kind, quantity))
        mark = summary_rows.new_mark(key, run, total, sealed, rows=not table_only)
        table = None
        if mark["sealed"] and tables.fits(rows[first_row:]):
            table = summary_rows.as_fetched(rows[first_row:])
        write = (run.id, copied if later and not table_only else [], mark, table)
        if later:
            deferred.append(write)
        else:
            _store_and_mark(db, kind, quantity, [write])
    if deferred:
        writeback.later(_store_and_mark, db, kind, quantity, deferred)
    return done, rows


def _store_and_mark(db, kind: str, quantity: str,
                    writes: Sequence[tuple[int, list[dict], dict, list[dict] | None]]) -> None:
    """Each run's copied summaries and its table, then its mark: a run is marked only once what
    the mark says is there is stored."""
    for run_id, docs, mark, table in writes:
        store_summaries(db, docs)
        if table is not None:
            tables.write_table(db, run_id, kind, quantity, None, summary_rows.stamp(mark), table)
        db[SUMMARISED].replace_one({"_id": mark["_id"]}, mark, upsert=True)


def _anchors(db, runs: Sequence[RunInfo], pick: Pick, align: int | str, rows: Sequence[dict] | None = None
             ) -> dict[tuple[int, int | None], float]:
    """Where x = 0 is for each run (or run and stage): from the fetched ``rows`` when given."""
    per_stage = align == "stage"
    anchor_stage = None if per_stage else _stage_anchor(runs, align)
    if rows is not None:
        return summary_rows.anchors(rows, anchor_stage)
    rows = db[STATS].aggregate(anchors_pipeline([r.id for r in runs], pick.kind, pick.quantity, anchor_stage))
    return {(row["_id"]["run"], row["_id"]["stage"] if per_stage else None): row["start"] for row in rows
            if per_stage or anchor_stage.get(row["_id"]["run"]) == row["_id"]["stage"]}


def curves_frame(db, runs: Sequence[RunInfo], picks: Sequence[Pick], aggregation: Aggregation | None = None,
                 check: bool = True, fetched: dict[tuple[str, str], list[dict]] | None = None) -> pd.DataFrame:
    """The tidy frame of every pick over the selected runs, from their per-bucket summaries.

    ``fetched``: (kind, quantity) -> those runs' plain summaries as ``summaries`` returned them,
    for a caller that summarised and fetched them already (``compare_runs``). Copies of summaries
    may still be being stored when this returns: ``ldreg.query.writeback.wait()`` joins them.
    """
    aggregation = aggregation or Aggregation()
    ids = [r.id for r in runs]
    labels = seed_groups(runs) if aggregation.seeds else run_labels(runs)
    names = response_labels(db, ids)
    if aggregation.align not in (None, "stage"):
        _stage_anchor(runs, aggregation.align)  # a stage no run has is an error before any work
    frames = []
    for i, pick in enumerate(picks):
        if check:
            check_pick(db, runs, pick, f"observe[{i}]")
        plain = (fetched or {}).get((pick.kind, pick.quantity))
        if plain is None:  # one fetch (or the copies just made), not a server pass for each use
            plain = summaries(db, runs, pick.kind, pick.quantity, defer=True)[1]
        stamps = ensure_derived(db, runs, pick.kind, pick.quantity, pick.minus, aggregation.change)
        if check:
            check_pick(db, runs, pick, f"observe[{i}]", summarised=True, rows=plain)
        anchors = _anchors(db, runs, pick, aggregation.align, plain) if aggregation.align is not None else None
        if aggregation.seeds or aggregation.ema:  # pooling and smoothing stay in the server
            summaries(db, runs, pick.kind, pick.quantity, stats_rows=True)  # they read the stored rows
            pipeline = curve_pipeline(ids, pick, aggregation, anchors=anchors, group_of=labels)
            rows = list(db[STATS].aggregate(pipeline, allowDiskUse=True))
        else:
            key = derived_key(pick.minus, aggregation.change)
            rows = summary_rows.curve_rows(plain if key is None else
                                           summary_rows.fetch(db, ids, pick.kind, pick.quantity, key, stamps), pick)
        if anchors is not None and not aggregation.seeds:
            shift_x(rows, anchors)
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        frame["quantity"] = pick.quantity
        frame["pick"] = i
        rank = {t: k for k, t in enumerate(pick.response_types or [])}
        frame["type_rank"] = [rank.get(t, len(rank)) for t in frame["response_type"]]  # panels in the pick's order
        frame["minus"] = pick.minus
        frame["response_label"] = [label_of(r, names) for r in frame["response_type"]]
        frame["update_label"] = [label_of(u, names) if isinstance(u, str) else None for u in frame["update_type"]]
        frame["change"] = aggregation.change
        pairs = list(zip(frame["response_type"], frame["update_type"]))
        labelled = {pair: series_label(pick, *pair, names) for pair in dict.fromkeys(pairs)}  # once a series
        frame["series"] = [labelled[pair] for pair in pairs]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    frame["run"] = frame["group"] if aggregation.seeds else frame["run_id"].map(labels)
    for col in ("mean", "median", "std"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    frame["ci_low"], frame["ci_high"] = t_interval(frame["mean"], frame["std"], frame["n"], aggregation.confidence)
    extra = [c for c in ("n_examples",) if c in frame]
    frame = frame.sort_values(["pick", "type_rank", "response_type", "run_id", "stage_index", "step"], kind="stable")
    return frame[COLUMNS + extra].reset_index(drop=True)


def entk_matrix(db, run_id: int, *, step: int | str = "first", probe_set: str | None = None,
                response_type: str | None = None) -> dict[str, Any]:
    """One run's eNTK Gram (``step``: a step, "first" or "last"), reshaped to n x n with its ids.

    A Gram is small (n <= a few dozen), so the one bucket is read as is.
    """
    query: dict[str, Any] = {"run_id": int(run_id), "kind": "entk"}
    if probe_set:
        query["probe_set"] = probe_set
    if response_type:
        query["response_type"] = response_type
    if isinstance(step, int):
        query["step"] = step
    order = -1 if step == "last" else 1
    doc = next(iter(db[OBSERVATIONS].find(query).sort("step", order).limit(1)), None)
    if doc is None:
        steps = sorted({d["step"] for d in db[OBSERVATIONS].find({"run_id": int(run_id), "kind": "entk"}, {"step": 1})})
        raise QueryError(f"run #{run_id} has no eNTK observation" + (f" at step {step}" if isinstance(step, int) else "")
                         + (f"; eNTK steps recorded: {steps}" if steps else
                            "; enable it with probing.entk in the experiment spec"))
    n = int((doc.get("meta") or {}).get("n") or math.isqrt(len(doc["values"]["gram"])))
    gram = np.asarray(doc["values"]["gram"], dtype=float).reshape(n, n)
    return {"gram": gram, "example_ids": list(doc["example_ids"])[:n], "step": doc["step"], "stage": doc["stage"],
            "response_type": doc["response_type"], "probe_set": doc["probe_set"], "meta": doc.get("meta") or {}}

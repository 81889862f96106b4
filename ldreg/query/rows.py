"""The selected runs' per-bucket summaries, fetched once, then filtered, anchored and listed here.

SecantusDB evaluates every pipeline stage in Python, row by row, so each aggregation over the
summaries (``observation_stats``) costs a full pass over them: a query of 100 runs made three
(what was recorded, where each run's stage begins, the curve rows) over ~28k rows. Here one
``find`` per run, on the indexed run_id (a ``$in`` over runs makes the server scan), brings
the rows of one kind and quantity, and the three passes are done on them in Python with the
same meaning as the pipelines (``recorded``, ``anchors_pipeline``, ``curve_pipeline`` without
seed pooling or smoothing): the same stored numbers come back, so curves are bit-identical.
Seed pooling and smoothing still run in the server (``ldreg.query.pipeline``).

A run that can no longer change (``sealed_runs``) keeps its summaries also as one table: a
document of columns (``STATS_TABLES``), read in one fetch where its 5,600 rows cost the server
~40 ms. A table is stamped with the state its run was summarised in (start, stop time, bucket
count: the same stamp as the run's mark) and read only while the mark still has that stamp.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ldreg.query import writeback
from ldreg.query.pipeline import KEY_FIELDS, STATS, Pick, recorded_in  # noqa: F401 (the rows' record)
from ldreg.store.tables import fits, read_table, write_table

CURVE_FIELDS = ("run_id", "stage", "examples_seen", "n", "mean", "std", "median") + KEY_FIELDS


NOT_FETCHED = ("_id", "run_start")  # fields of a stored summary a fetch leaves out


def sealed_runs(db, runs: Sequence[Any]) -> dict[int, Any]:
    """Run id -> its stop time, for the runs whose buckets can no longer change: COMPLETED with
    nothing left in a spool (``result.observations_spooled``: `ldreg db flush` may add buckets
    later). A resumed run is RUNNING again, and completes with a new stop time."""
    sealed = {}
    for doc in db.runs.find({"_id": {"$in": [r.id for r in runs]}, "status": "COMPLETED"},
                            {"stop_time": 1, "result.observations_spooled": 1}):
        result = doc.get("result")
        if not (isinstance(result, dict) and result.get("observations_spooled")):
            sealed[doc["_id"]] = doc.get("stop_time")
    return sealed


def stamp(mark: Mapping[str, Any]) -> dict[str, Any]:
    """What a sealed run's summaries were made from, as its mark records it."""
    return {"run_start": mark.get("run_start"), "stop_time": mark.get("stop_time"), "buckets": mark.get("buckets")}


def new_mark(mark_id: str, run: Any, total: int, sealed: Mapping[int, Any], **more: Any) -> dict[str, Any]:
    """A run's mark: how many buckets were summarised, of which run (its start), and whether it was
    sealed then (``sealed_runs``, read before counting, so a run that completed meanwhile is
    recounted next time) with its stop time."""
    return {"_id": mark_id, "buckets": total, "run_start": run.start_time, "sealed": run.id in sealed,
            "stop_time": sealed.get(run.id), **more}


def unchanged(mark: Mapping[str, Any] | None, run: Any, sealed: Mapping[int, Any]) -> bool:
    """Whether the run was sealed when ``mark`` was made and is unchanged since (same start, still
    sealed, same stop time): then no bucket can have been added, and it need not be recounted."""
    return (mark is not None and mark.get("run_start") == run.start_time and bool(mark.get("sealed"))
            and run.id in sealed and mark.get("stop_time") == sealed[run.id])


def fetch(db, run_ids: Sequence[int], kind: str, quantity: str, derived: str | None = None,
          stamps: Mapping[int, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every summary of ``kind`` and ``quantity`` (plain, or marked ``derived``) of the runs, run by run.

    ``stamps``: run -> ``stamp`` of its mark, for sealed runs: read from the run's table when it
    has that stamp, else row by row, and the table written (on a ``writeback`` thread) for next time.
    """
    rows: list[dict[str, Any]] = []
    for run_id in run_ids:
        sealed = (stamps or {}).get(run_id)
        table = read_table(db, run_id, kind, quantity, derived, sealed) if sealed is not None else None
        if table is None:
            table = list(db[STATS].find({"run_id": int(run_id), "kind": kind, "quantity": quantity, "derived": derived},
                                        {f: 0 for f in NOT_FETCHED}))
            if sealed is not None and fits(table):
                writeback.later(write_table, db, run_id, kind, quantity, derived, sealed, table)
        rows.extend(table)
    return rows


def as_fetched(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored summaries (``pipeline.read_summaries``) as ``fetch`` gives them."""
    return [{f: v for f, v in row.items() if f not in NOT_FETCHED} for row in rows]


def as_stored(rows: Iterable[Mapping[str, Any]], quantity: str, run_start: Any) -> list[dict[str, Any]]:
    """Fetched plain summaries (with their ``bucket``) as stored, one per bucket: ``as_fetched``'s inverse."""
    return [{**row, "_id": f"{row['bucket']}|{quantity}", "run_start": run_start} for row in rows]


def anchors(rows: Iterable[Mapping[str, Any]], anchor_stage: Mapping[int, int] | None
            ) -> dict[tuple[int, int | None], Any]:
    """Each run's first examples_seen in its anchor stage (``anchor_stage``: run -> stage index) or,
    with None, in each of its stages (keyed (run, stage)); as ``anchors_pipeline`` and its caller."""
    first: dict[tuple[int, Any], Any] = {}
    for row in rows:
        seen = row.get("examples_seen")
        if seen is None:
            continue  # $min leaves out missing and null
        key = (row["run_id"], row.get("stage_index"))
        if key not in first or seen < first[key]:
            first[key] = seen
    if anchor_stage is None:
        return dict(first)
    return {(run, None): start for (run, stage), start in first.items() if anchor_stage.get(run) == stage}


def _picked(row: Mapping[str, Any], pick: Pick, indices: set[int], names: set[str]) -> bool:
    """``match_stage``'s filter, on one row."""
    if pick.response_types is not None and row.get("response_type") not in pick.response_types:
        return False
    if pick.probe_set is not None and row.get("probe_set") != pick.probe_set:
        return False
    if pick.update_types is not None and row.get("update_type") not in pick.update_types:
        return False
    if pick.stages is not None and row.get("stage_index") not in indices and row.get("stage") not in names:
        return False
    if pick.steps is not None:
        step = row.get("step")
        if not isinstance(step, (int, float)) or not int(pick.steps[0]) <= step <= int(pick.steps[1]):
            return False
    return True


def curve_rows(rows: Iterable[Mapping[str, Any]], pick: Pick) -> list[dict[str, Any]]:
    """The pick's rows as ``curve_pipeline`` returns them without pooling or smoothing: x (to be
    shifted by ``shift_x``) is examples_seen, and the fields a row lacks stay absent."""
    indices = {s for s in pick.stages or [] if isinstance(s, int)}
    names = {s for s in pick.stages or [] if isinstance(s, str)}
    out = []
    for row in rows:
        if _picked(row, pick, indices, names):
            kept = {f: row[f] for f in CURVE_FIELDS if f in row}
            if "examples_seen" in row:
                kept["x"] = row["examples_seen"]
            out.append(kept)
    return out

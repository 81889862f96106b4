"""Every MongoDB collection ldreg reads or writes, named here and nowhere else.

Sacred owns ``runs`` and ``metrics`` (and GridFS's ``fs.*``); ldreg owns the observations, the
run-id counter and the query layer's caches. The caches are derived from one run's observations,
so deleting a run deletes them too: the store lists them here (``PER_RUN_CACHES``) rather than
importing the query layer, which imports the store and never the other way round.
"""

from __future__ import annotations

RUNS = "runs"  # Sacred's run documents
METRICS = "metrics"  # Sacred's metric series (written by ldreg.store.metrics)
COUNTERS = "counters"  # run ids, never given twice (ldreg.store.runs.next_run_id)
OBSERVATIONS = "observations"  # the probe/influence/eNTK buckets (ldreg.store.documents)
EVENTS = "events"  # alarms a run raised, one per (run, alarm, probing set) (ldreg.store.events)
JUDGEMENTS = "judgements"  # pairwise verdicts on runs' answers, field run_ids (ldreg.judging.winrate)

# The query layer's caches, each derived from one run's observations.
STATS = "observation_stats"  # one summary per (bucket, quantity[, derived]); field run_id
STATS_SUMMARISED = "observation_stats_runs"  # per (run, kind, quantity): buckets summarised; _id "run|..."
STATS_DERIVED = "observation_stats_derived"  # per (run, kind, quantity, derived): buckets seen; _id "run|..."
STATS_TABLES = "observation_stats_tables"  # a sealed run's summaries as one document of columns; _id "run|..."

PER_RUN_CACHES = (STATS, STATS_SUMMARISED, STATS_DERIVED, STATS_TABLES)


def cache_filter(name: str, run_id: int) -> dict:
    """The documents of cache ``name`` that belong to run ``run_id``."""
    if name == STATS:
        return {"run_id": run_id}
    return {"_id": {"$regex": f"^{int(run_id)}\\|"}}

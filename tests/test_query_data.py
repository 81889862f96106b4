"""Known observations for the query tests: Sacred-format run documents and probe buckets.

Runs 1 and 2 are sft->dpo with seeds 0 and 1 (a seed group); run 3 is sft->ipo, seed 0.
Each run probes at examples seen 0, 4, 8 (stage 0) and 8, 12, 16 (stage 1); the values of a
bucket are ``base + k`` with ``k`` the probe's position (0..5) and ``base`` per response type,
plus the run's offset, so every statistic can be worked out by hand.
"""

from __future__ import annotations

import datetime as dt

from ldreg.observations import Observation
from ldreg.store.documents import bucket_from_observation

CHOSEN = [1.0, 2.0, 4.0, 10.0, float("nan")]  # finite: 1, 2, 4, 10 -> mean 4.25, median 3
REJECTED = [-1.0, -3.0, -2.0]                  # mean -2, median -2
PROBES = [(0, 0, 0), (0, 1, 4), (0, 2, 8), (1, 2, 8), (1, 3, 12), (1, 4, 16)]  # (stage_index, step, examples_seen)
RUN_OFFSET = {1: 0.0, 2: 1.0, 3: 5.0}


def run_doc(run_id: int, name: str, seed: int, second_loss: str, tags=(), status="COMPLETED", minute=0) -> dict:
    start = dt.datetime(2025, 1, 1, 12, minute)
    return {"_id": run_id, "experiment": {"name": name}, "status": status, "start_time": start,
            "stop_time": start + dt.timedelta(minutes=5), "meta": {"tags": list(tags), "comment": ""},
            "config": {"name": name, "seed": seed, "stages": [{"loss": "sft", "lr": 1e-6, "name": "0-sft"},
                                                              {"loss": second_loss, "lr": 2e-6, "name": f"1-{second_loss}"}]}}


def probe_docs(run_id: int) -> list[dict]:
    docs = []
    offset = RUN_OFFSET[run_id]
    for k, (stage_index, step, seen) in enumerate(PROBES):
        stage = "0-sft" if stage_index == 0 else "1-x"
        for rtype, base in (("chosen", CHOSEN), ("rejected", REJECTED)):
            values = [v + k + offset for v in base]
            obs = Observation(kind="probe", step=step, examples_seen=seen, stage=stage, stage_index=stage_index,
                              probe_set="train", response_type=rtype, example_ids=list(range(len(values))),
                              values={"logp_sum": values, "argmax_logp": [v / 2 for v in values]})
            docs.append(bucket_from_observation(run_id, obs))
    return docs


def populate(db) -> None:
    db.runs.insert_many([run_doc(1, "sft-dpo", 0, "dpo", tags=["paper"], minute=1),
                         run_doc(2, "sft-dpo", 1, "dpo", tags=["paper"], minute=2),
                         run_doc(3, "sft-ipo", 0, "ipo", minute=3)])
    db.observations.insert_many([d for r in (1, 2, 3) for d in probe_docs(r)])


def influence_docs(run_id: int) -> list[dict]:
    """Step 0: updating on u changes o by (+1 if u == o else -0.5) + example index / 10."""
    docs = []
    for u in ("chosen", "rejected"):
        for o in ("chosen", "rejected", "random_sentence"):
            delta = [(1.0 if u == o else -0.5) + i / 10 for i in range(4)]
            obs = Observation(kind="influence", step=0, examples_seen=0, stage="0-sft", stage_index=0, probe_set="train",
                              response_type=o, update_type=u, example_ids=[0, 1, 2, 3],
                              values={"delta_logp": delta, "lbk": [abs(d) for d in delta]}, meta={"lr": 1e-3})
            docs.append(bucket_from_observation(run_id, obs))
    return docs


def entk_doc(run_id: int) -> dict:
    gram = [[4.0, 1.0, 0.5], [1.0, 9.0, 2.0], [0.5, 2.0, 1.0]]
    obs = Observation(kind="entk", step=0, examples_seen=0, stage="0-sft", stage_index=0, probe_set="train",
                      response_type="chosen", example_ids=[7, 8, 9], values={"gram": [v for row in gram for v in row]},
                      meta={"n": 3, "mode": "exact"})
    return bucket_from_observation(run_id, obs)


def populate_all(db) -> None:
    populate(db)
    db.observations.insert_many(influence_docs(1) + [entk_doc(1)])

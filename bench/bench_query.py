"""Benchmark: the standard comparison chart for 10 runs, from query to written PNG.

Scale (the storage benchmark's): 500 probe examples x 14 response types x 400 probe steps per run,
2.8M per-example values a run, stored as 5,600 buckets. The ldreg path aggregates in the server
(one row per bucket comes back); the baseline pulls every raw bucket into pandas and aggregates
there. Both run in this process against the same embedded SecantusDB, and the ratio is reported.

    python -m bench.bench_query            # full scale (10 runs x 400 steps)
    python -m bench.bench_query --quick    # 10 runs x 40 steps
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESPONSE_TYPES = ["chosen", "rejected", "initial", "chosen_rephrase_semantic", "rejected_rephrase_semantic",
                  "chosen_rephrase_format", "rejected_rephrase_format", "chosen_selfr",
                  "rejected_selfr", "irrelevant_train", "irrelevant_test", "random_sentence",
                  "chosen_permuted", "random_permuted"]


def synthetic_run(run_id: int, steps: int, examples: int, seed: int, every: int = 100, dpo_from: float = 0.5) -> tuple[dict, list[dict]]:
    """A Sacred run document and its probe buckets: SFT then DPO, curves shaped like the paper's."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2025, 1, 1) + dt.timedelta(minutes=run_id)
    lr = [5e-7, 1e-6][run_id % 2]
    run = {"_id": run_id, "experiment": {"name": "bench-sft-dpo"}, "status": "COMPLETED", "start_time": start,
           "stop_time": start + dt.timedelta(hours=1), "meta": {"tags": ["bench"]},
           "config": {"name": "bench-sft-dpo", "seed": seed, "stages": [{"loss": "sft", "lr": lr, "name": "0-sft"},
                                                                        {"loss": "dpo", "lr": lr, "name": "1-dpo"}]}}
    switch = int(steps * dpo_from)
    base = {t: -60.0 - 8 * i for i, t in enumerate(RESPONSE_TYPES)}
    noise = rng.normal(0, 6.0, size=(len(RESPONSE_TYPES), examples))
    docs = []
    for k in range(steps):
        stage_index = int(k >= switch)
        progress = k / steps
        for i, rtype in enumerate(RESPONSE_TYPES):
            trend = (25 if rtype == "chosen" else 4 - 10 * i / 14) * min(progress, dpo_from)
            if stage_index:
                trend -= (30 + 2 * i) * (progress - dpo_from) * (1 + lr * 1e6 * 0.3)
            values = base[rtype] + trend + noise[i] + rng.normal(0, 1.0, examples)
            docs.append({"_id": f"{run_id}-{k}-{rtype}", "run_id": run_id, "kind": "probe",
                         "stage": ["0-sft", "1-dpo"][stage_index], "stage_index": stage_index, "step": k * 25,
                         "examples_seen": k * every, "probe_set": "train", "response_type": rtype,
                         "update_type": None, "example_ids": list(range(examples)),
                         "values": {"logp_sum": values.tolist()}, "meta": {}, "schema_version": 1})
    return run, docs


def populate(db, runs: int, steps: int, examples: int) -> float:
    """Insert the runs (insert_many in batches); return seconds taken."""
    from ldreg.store.documents import ensure_indexes

    ensure_indexes(db)
    t0 = time.perf_counter()
    for r in range(1, runs + 1):
        run, docs = synthetic_run(r, steps, examples, seed=r // 2)
        db.runs.insert_one(run)
        for i in range(0, len(docs), 200):
            db.observations.insert_many(docs[i:i + 200], ordered=False)
    return time.perf_counter() - t0


def ldreg_path(db, out: Path) -> float:
    from ldreg.query.charts.curves import curves_chart
    from ldreg.query.observations import curves_frame
    from ldreg.query.pipeline import Aggregation, Pick
    from ldreg.query.select import select_runs

    t0 = time.perf_counter()
    runs = select_runs(db, tags=["bench"])
    frame = curves_frame(db, runs, [Pick(response_types=RESPONSE_TYPES)], Aggregation(align="dpo"))
    curves_chart(frame, facet="series", columns=5, align="dpo", title="bench").save(str(out), scale_factor=1.0)
    return time.perf_counter() - t0


def baseline_path(db, out: Path) -> float:
    """Pull every raw bucket into pandas, explode the arrays, aggregate there, same chart."""
    from ldreg.query.charts.curves import curves_chart
    from ldreg.query.labels import run_labels
    from ldreg.query.observations import t_interval
    from ldreg.query.select import select_runs

    t0 = time.perf_counter()
    runs = select_runs(db, tags=["bench"])
    docs = list(db.observations.find({"run_id": {"$in": [r.id for r in runs]}, "kind": "probe"}))
    raw = pd.DataFrame([{k: d[k] for k in ("run_id", "stage", "stage_index", "step", "examples_seen", "probe_set",
                                           "response_type")} | {"v": d["values"]["logp_sum"]} for d in docs])
    long = raw.explode("v")
    long["v"] = long["v"].astype(float)
    keys = ["run_id", "stage", "stage_index", "step", "examples_seen", "probe_set", "response_type"]
    frame = long.groupby(keys)["v"].agg(["mean", "median", "std", "count"]).reset_index().rename(columns={"count": "n"})
    dpo_start = frame[frame.stage_index == 1].groupby("run_id")["examples_seen"].min()
    frame["x"] = frame["examples_seen"] - frame["run_id"].map(dpo_start)
    frame["ci_low"], frame["ci_high"] = t_interval(frame["mean"], frame["std"], frame["n"], 0.95)
    frame["run"] = frame["run_id"].map(run_labels(runs))
    frame["series"], frame["quantity"], frame["update_type"] = frame["response_type"], "logp_sum", None
    curves_chart(frame, facet="series", columns=5, align="dpo", title="bench").save(str(out), scale_factor=1.0)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 probe steps a run instead of 400")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (40 if args.quick else 400)

    from ldreg.store.connection import open_client
    from ldreg.store.server import EmbeddedServer

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "db")
        info = server.start()
        try:
            db = open_client(info.url, timeout_s=10)["bench_query"]
            values = args.runs * steps * len(RESPONSE_TYPES) * args.examples
            print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
            print(f"data: {args.runs} runs x {steps} steps x {len(RESPONSE_TYPES)} response types x {args.examples} "
                  f"examples = {values / 1e6:.1f}M values in {args.runs * steps * len(RESPONSE_TYPES):,} buckets")
            print(f"insert: {populate(db, args.runs, steps, args.examples):.1f} s")
            cold = ldreg_path(db, Path(tmp) / "cold.png")  # the first query summarises every bucket once
            ours = ldreg_path(db, Path(tmp) / "ldreg.png")
            base = baseline_path(db, Path(tmp) / "baseline.png")
            print(f"first query -> PNG (summarises every bucket in the server): {cold:.2f} s")
            print(f"query -> PNG, aggregated in the database: {ours:.2f} s")
            print(f"query -> PNG, raw buckets into pandas:   {base:.2f} s")
            print(f"speed-up: {base / ours:.1f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

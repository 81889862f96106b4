"""Storing one run's probe observations: StoreSink against bare pymongo, and against no storage.

One run's worth by default: 500 probe examples x 14 response types x 400 probe steps, stored
as 5,600 buckets holding 2.8M per-example values (``values`` = {"logp_sum": 500 floats} per
bucket). Everything runs in this process against a fresh embedded server (SecantusDB) in a
temp directory, and every number is a ratio against a baseline measured in the same run:

(a) StoreSink throughput (convert, queue, journaled batch insert) vs pymongo ``insert_many`` of
    the same, pre-built documents with the same batch size (default and journaled write concern);
(b) a simulated training loop (a fixed torch matmul workload per probe step) that emits each
    step's 14 observations to a StoreSink, vs the same loop storing nothing, in alternating
    blocks of steps (a shared machine's load then hits both alike). The overhead is relative
    to the simulated compute: a real probe pass (500 examples x 14 types through a model)
    takes far longer than the default ~50 ms, so the real overhead is smaller;
(c) reading one response type's curve (every step's logp_sum for one run) back.

    python -m bench.bench_store --quick
    python -m bench.bench_store
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from pymongo import WriteConcern

from ldreg.observations import Observation
from ldreg.store.connection import open_client
from ldreg.store.documents import COLLECTION, bucket_from_observation, ensure_indexes, find_buckets
from ldreg.store.server import EmbeddedServer
from ldreg.store.sink import StoreSink

TYPES = ("chosen", "rejected", "chosen_initial", "chosen_gptsemantic", "chosen_gptformat", "rejected_gptsemantic",
         "rejected_gptformat", "irr_train", "irr_test", "irr_hum", "random_permute", "random_nonhum",
         "chosen_selfr", "rejected_selfr")
BATCH = 256  # the sink's default: fewer, larger journaled writes


def observations(n_examples: int, n_steps: int, seed: int = 0):
    """Each probe step's 14 observations; value arrays drawn from a small pool (content is irrelevant)."""
    rng = random.Random(seed)
    pool = [[rng.gauss(-40.0, 10.0) for _ in range(n_examples)] for _ in range(32)]
    ids = list(range(n_examples))
    for step in range(n_steps):
        yield [Observation(kind="probe", step=step * 10, examples_seen=step * 640, stage="sft", stage_index=0,
                           probe_set="train", response_type=t, example_ids=ids,
                           values={"logp_sum": pool[(step * 14 + k) % len(pool)]})
               for k, t in enumerate(TYPES)]


def time_insert_many(db, docs, write_concern: WriteConcern) -> float:
    collection = db.get_collection(COLLECTION, write_concern=write_concern)
    ensure_indexes(db)
    start = time.perf_counter()
    for i in range(0, len(docs), BATCH):
        collection.insert_many(docs[i:i + BATCH], ordered=False)
    return time.perf_counter() - start


def time_sink(db, run_id: int, steps, spool: Path) -> float:
    start = time.perf_counter()
    sink = StoreSink(run_id, db, spool_path=spool, batch_size=BATCH)
    for step_obs in steps:
        for obs in step_obs:
            sink.emit(obs)
    counts = sink.close()
    assert counts.left == 0 and counts.stored == sum(len(s) for s in steps), counts
    return time.perf_counter() - start


def compute(work: tuple[torch.Tensor, int]) -> None:
    """One probe step's simulated compute: a fixed number of independent matmuls."""
    matrix, repeats = work
    for _ in range(repeats):  # independent products: a chain would decay into slow denormals
        torch.tanh(matrix @ matrix)


def interleaved_training(steps, work, sink: StoreSink, block: int = 20) -> tuple[float, float, float]:
    """Alternate blocks of ``block`` steps without and with storing, so that load from other
    processes on a shared machine hits both modes alike. Returns (seconds without, seconds with,
    seconds spent inside emit); the final drain (close) is charged to the storing mode."""
    bare = stored = in_emit = 0.0
    for first in range(0, len(steps), block):
        chunk = steps[first:first + block]
        start = time.perf_counter()
        for _ in chunk:
            compute(work)
        bare += time.perf_counter() - start
        start = time.perf_counter()
        for step_obs in chunk:
            compute(work)
            emit_start = time.perf_counter()
            for obs in step_obs:
                sink.emit(obs)
            in_emit += time.perf_counter() - emit_start
        stored += time.perf_counter() - start
    start = time.perf_counter()
    sink.close()
    stored += time.perf_counter() - start
    return bare, stored, in_emit


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 examples x 14 types x 40 steps")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--matrix", type=int, default=512, help="side of the simulated step's matmuls")
    parser.add_argument("--repeats", type=int, default=2, help="matmuls per simulated probe step")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats of (a); the best counts")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what ldreg's cpu backend uses, half the cores)")
    args, _ = parser.parse_known_args()
    from ldreg_plugins.backends.cpu import default_threads

    torch.set_num_threads(args.threads or default_threads())
    if args.quick:
        args.examples, args.steps = 100, 40
    steps = list(observations(args.examples, args.steps))
    n_buckets, n_values = len(steps) * len(TYPES), len(steps) * len(TYPES) * args.examples
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"workload: {args.examples} examples x {len(TYPES)} types x {args.steps} steps = "
          f"{n_buckets} buckets, {n_values / 1e6:.2f}M values")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ldreg-bench-store-") as tmp:
        server = EmbeddedServer(tmp)
        info = server.start()
        client = open_client(info.url, timeout_s=10)
        try:
            # (a) throughput
            docs = [bucket_from_observation(1, o) for s in steps for o in s]
            time_insert_many(client["bench_warmup"], docs[:BATCH * 4], WriteConcern())
            plains, journaleds, sinks = [], [], []
            for r in range(args.rounds):  # interleaved, best of each: the machine is shared and noisy
                plains.append(time_insert_many(client[f"bench_plain{r}"], docs, WriteConcern()))
                journaleds.append(time_insert_many(client[f"bench_journaled{r}"], docs, WriteConcern(j=True)))
                sinks.append(time_sink(client[f"bench_sink{r}"], 1, steps, Path(tmp) / "spool-a.jsonl"))
            plain, journaled, sink_s = min(plains), min(journaleds), min(sinks)
            rows.append({"measure": "insert_many, default write concern (baseline)", "seconds": plain,
                         "value": f"{n_values / plain / 1e6:.2f}M values/s", "ratio": 1.0})
            rows.append({"measure": "insert_many, journaled (j=True)", "seconds": journaled,
                         "value": f"{n_values / journaled / 1e6:.2f}M values/s", "ratio": plain / journaled})
            rows.append({"measure": "(a) StoreSink: emit all + close (journaled)", "seconds": sink_s,
                         "value": f"{n_values / sink_s / 1e6:.2f}M values/s", "ratio": plain / sink_s,
                         "target": "ratio >= 0.8"})
            rows.append({"measure": "    StoreSink vs journaled insert_many", "seconds": sink_s, "value": "",
                         "ratio": journaled / sink_s})

            # (b) overhead during training
            work = (torch.randn(args.matrix, args.matrix) / args.matrix ** 0.5, args.repeats)
            compute(work)  # warm-up
            sink = StoreSink(2, client["bench_train"], spool_path=Path(tmp) / "b.jsonl")
            bare, stored, in_emit = interleaved_training(steps, work, sink)
            rows.append({"measure": f"training, no storage ({1000 * bare / len(steps):.0f} ms/step)", "seconds": bare,
                         "value": f"{args.repeats} x {args.matrix}^2 matmul per step", "ratio": 1.0})
            rows.append({"measure": "(b) training + StoreSink (interleaved blocks)", "seconds": stored,
                         "value": f"overhead {100 * (stored / bare - 1):+.1f}%, {in_emit:.2f} s inside emit",
                         "ratio": bare / stored, "target": "overhead <= 5%"})
            assert client["bench_train"][COLLECTION].count_documents({}) == n_buckets

            # (c) read one response type's curve
            reads = []
            for _ in range(3):
                start = time.perf_counter()
                curve = list(find_buckets(client["bench_sink0"], 1, response_type="rejected", quantities=["logp_sum"]))
                reads.append(time.perf_counter() - start)
            assert len(curve) == args.steps and len(curve[0]["values"]["logp_sum"]) == args.examples
            read = statistics.median(reads)
            rows.append({"measure": f"(c) read one curve ({args.steps} steps x {args.examples})", "seconds": read,
                         "value": f"{args.steps * args.examples / read / 1e6:.2f}M values/s", "ratio": None,
                         "target": "< 1 s"})
        finally:
            client.close()
            server.stop()
    print(f"\n{'measure':58} {'seconds':>8} {'ratio':>6}  value / target")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        target = f"  [{r['target']}]" if r.get("target") else ""
        print(f"{r['measure']:58} {r['seconds']:8.2f} {ratio:>6}  {r['value']}{target}")
    return rows


if __name__ == "__main__":
    main()

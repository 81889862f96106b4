"""Storing one run's probe observations: StoreSink against bare pymongo, and against no storage.

One run's worth by default: 500 probe examples x 14 response types x 400 probe steps, stored
as 5,600 buckets holding 2.8M per-example values (``values`` = {"logp_sum": 500 floats} per
bucket). Everything runs in this process against a fresh embedded server (SecantusDB) in a
temp directory, and every number is a ratio against a baseline measured in the same run:

(a) StoreSink throughput (convert, queue, journaled batch insert) vs pymongo ``insert_many`` of
    the same, pre-built documents with the same batch size (default and journaled write concern),
    each into an empty collection whose indexes exist already, in interleaved rounds (order reversed
    every other round); the medians count, and each round's ratio is printed as a median and range,
    since at ``--quick`` size (0.2 s a side) one round on a shared machine says little;
(b) a simulated training loop (a fixed torch matmul workload per probe step) that emits each
    step's 14 observations to a StoreSink, vs the same loop storing nothing, in alternating
    blocks of steps (a shared machine's load then hits both alike). The overhead is relative
    to the simulated compute: a real probe pass (500 examples x 14 types through a model)
    takes far longer than the default ~50 ms, so the real overhead is smaller;
(c) reading one response type's curve (every step's logp_sum for one run) back;
(d) the storing overhead of a real run: the demo's sft-dpo pipeline (experiments/sft-dpo.yaml with
    the demo's overrides for seed 1) run through ``run_experiment`` with the StoreSink the runner
    uses, and the same run with ``DroppingSink`` (takes each observation, converts nothing, stores
    nothing; selected by this benchmark only), after one uncounted warm-up run, in the order store,
    none, none, store so that a drift in the machine's load hits both alike. Wall time is the
    target; on a shared machine other load swamps it, so each run's CPU seconds (this process and
    the server) and the store's own costs are printed too. Both sides keep Sacred's record (run document,
    metrics, heartbeats); the difference is the observation store. ``--quick`` uses
    experiments/quick-sft-dpo.yaml; ``--real-set KEY=VALUE`` overrides the spec (a subset of steps).

    python -m bench store --quick
    python -m bench store                      # (a)-(d) at full size: (d) is 5 runs of sft-dpo
    python -m bench store --only-real --real-set stages.0.epochs=1 --real-set stages.1.epochs=1
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
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
    ensure_indexes(db)  # as for insert_many: an indexed, empty collection, so neither times creating it
    # the run's document, so that the sink also writes the run's summary tables at close, as in a real run
    db.runs.replace_one({"_id": run_id}, {"_id": run_id, "start_time": datetime.datetime(2026, 1, 1)}, upsert=True)
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


class DroppingSink:
    """Bench only, the "without the store" side of (d): takes each observation and keeps nothing (no
    conversion, no thread, no database). Only this benchmark selects it; no command offers it."""

    def __init__(self, run_id: int):
        self.run_id = run_id

    def emit(self, obs: Observation) -> None:
        pass

    def close(self) -> None:
        return None


class TimedSink:
    """Wraps a sink and adds up the seconds the training thread spends inside its emit and close."""

    def __init__(self, inner):
        self.inner, self.emit_s, self.close_s = inner, 0.0, 0.0

    def emit(self, obs: Observation) -> None:
        start = time.perf_counter()
        self.inner.emit(obs)
        self.emit_s += time.perf_counter() - start

    def close(self):
        start = time.perf_counter()
        try:
            return self.inner.close()
        finally:
            self.close_s += time.perf_counter() - start

    def __getattr__(self, name):  # settle, spool, ... of the wrapped sink, as the runner asks for them
        return getattr(self.inner, name)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), e.g. the database server's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed_home(home: Path) -> list[str]:
    """Copy the pretrained base models and generated data sets of the user's LDREG_HOME (read only)
    into the bench's own home, so (d) neither pretrains again nor writes to the user's database."""
    source = Path(os.environ.get("LDREG_HOME") or ".ldreg").resolve() / "cache"
    copied = []
    for part in ("pretrained", "datasets"):
        if (source / part).is_dir():
            shutil.copytree(source / part, home / "cache" / part)
            copied.append(str(source / part))
    return copied


def real_overhead(args) -> list[dict]:
    """(d): the same real run with the store and with DroppingSink, alternating (store, none, none, store)."""
    from ldreg import spec as specs
    from ldreg.backends import resolve_backend
    from ldreg.paper.demo import ches_override
    from ldreg.registry import get_plugins
    from ldreg.runner import prepare, run_experiment
    from ldreg.store.connection import disconnect

    spec_path = Path(args.real_spec or ("experiments/quick-sft-dpo.yaml" if args.quick else "experiments/sft-dpo.yaml"))
    overrides = ["seed=1", *ches_override(spec_path.stem), *args.real_set]  # what `ldreg demo` runs for seed 1
    saved_env = {k: os.environ.get(k) for k in ("LDREG_HOME", "LDREG_MONGO_URL")}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ldreg-bench-real-") as tmp:
        home = Path(tmp)
        copied = seed_home(home)
        server = EmbeddedServer(home)
        try:
            info = server.start()
            os.environ["LDREG_HOME"], os.environ["LDREG_MONGO_URL"] = str(home), info.url
            disconnect()
            plugins = get_plugins()
            spec = specs.load(spec_path, overrides, plugins)
            print(f"(d) {spec_path} {' '.join(overrides)}; caches from {', '.join(copied) or 'nowhere (pretrains first)'}",
                  flush=True)
            start = time.perf_counter()
            prepare(spec, resolve_backend(spec.backend, plugins.backends), plugins)  # builds the caches both sides reuse
            print(f"    warm-up (prepare, probing sets cached): {time.perf_counter() - start:.1f} s", flush=True)
            runs = {"store": [], "none": [], "warm-up": []}
            # a first uncounted run, so that one-off costs of a process's first run (modules imported
            # on first use, caches, allocator growth) fall on neither side
            for mode in ["warm-up"] * args.real_warmup + ["store", "none", "none", "store"] * args.real_rounds:
                made: list[TimedSink] = []

                def factory(run_id: int, mode=mode, made=made):
                    from ldreg.store.sink import StoreSink as Sink

                    made.append(TimedSink(Sink(run_id) if mode == "store" else DroppingSink(run_id)))
                    return made[-1]

                cpu0, own0 = process_cpu_s(info.pid), time.process_time()
                start = time.perf_counter()
                done = run_experiment(spec, spec_path=spec_path, progress=False, plugins=plugins, sink_factory=factory)
                wall = time.perf_counter() - start
                timed = made[0]
                entry = {"wall": wall, "emit": timed.emit_s, "close": timed.close_s, "cpu": time.process_time() - own0,
                         "threads": getattr(timed.inner, "thread_cpu_s", 0.0), "server": process_cpu_s(info.pid) - cpu0,
                         "observations": done.result.get("observations", 0), "steps": done.result.get("steps", 0)}
                runs[mode].append(entry)
                print(f"    run {done.run_id} {mode:5}: {wall:7.1f} s wall, {entry['steps']} steps, "
                      f"{entry['observations']} observations; emit {entry['emit']:.3f} s, close {entry['close']:.3f} s, "
                      f"CPU: this process {entry['cpu']:.1f} s (sink threads {entry['threads']:.2f} s), server {entry['server']:.2f} s",
                      flush=True)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            disconnect()
            server.stop()
    store = statistics.mean(r["wall"] for r in runs["store"])
    bare = statistics.mean(r["wall"] for r in runs["none"])
    n = len(runs["store"])
    mean = {k: statistics.mean(r[k] for r in runs["store"]) for k in ("emit", "close", "threads")}
    # the server also serves Sacred's heartbeats, which scale with wall time: charge the store only
    # the server CPU beyond the dropped runs' rate per second over the same wall time
    rate = sum(r["server"] for r in runs["none"]) / sum(r["wall"] for r in runs["none"])
    server_extra = statistics.mean(r["server"] - rate * r["wall"] for r in runs["store"])
    spread = max(r["wall"] for r in runs["none"]) - min(r["wall"] for r in runs["none"])
    rows.append({"measure": f"real run, observations dropped ({spec_path.stem}, mean of {n})", "seconds": bare,
                 "value": f"{runs['none'][0]['steps']} steps; spread of these runs {spread:.1f} s", "ratio": 1.0})
    rows.append({"measure": f"(d) real run with the store (mean of {n})", "seconds": store,
                 "value": f"overhead {100 * (store / bare - 1):+.1f}%; {runs['store'][0]['observations']} observations",
                 "ratio": bare / store, "target": "overhead <= 5%"})
    cpu = {mode: statistics.mean(r["cpu"] + r["server"] for r in runs[mode]) for mode in runs}
    rows.append({"measure": "    CPU seconds (this process + server), store vs dropped", "seconds": cpu["store"],
                 "value": f"{100 * (cpu['store'] / cpu['none'] - 1):+.1f}% ({cpu['none']:.1f} s dropped): "
                          "less sensitive to other load than wall time", "ratio": cpu["none"] / cpu["store"]})
    rows.append({"measure": "    on the training thread: emit + close", "seconds": mean["emit"] + mean["close"],
                 "value": f"{100 * (mean['emit'] + mean['close']) / bare:.2f}% of the run (emit {mean['emit']:.3f} s, "
                          f"close {mean['close']:.3f} s)", "ratio": None})
    rows.append({"measure": "    CPU beside it: sink threads + extra server CPU", "seconds": mean["threads"] + server_extra,
                 "value": f"sink threads {mean['threads']:.2f} s, server {server_extra:+.2f} s beyond the dropped runs' "
                          f"{rate:.3f} s/s", "ratio": None})
    return rows


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 examples x 14 types x 40 steps")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--matrix", type=int, default=512, help="side of the simulated step's matmuls")
    parser.add_argument("--repeats", type=int, default=2, help="matmuls per simulated probe step")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved repeats of (a); medians count (default 3, --quick 21: a 0.2 s figure is noisy)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what ldreg's cpu backend uses, half the cores)")
    parser.add_argument("--real-spec", default=None, help="(d)'s spec (default experiments/sft-dpo.yaml; "
                        "--quick: quick-sft-dpo.yaml)")
    parser.add_argument("--real-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override (d)'s spec, e.g. stages.0.epochs=1 for a subset of its steps")
    parser.add_argument("--real-rounds", type=int, default=1, help="(d): blocks of (store, none, none, store)")
    parser.add_argument("--real-warmup", type=int, default=1, help="(d): uncounted runs first (dropped observations)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-real", action="store_true", help="skip (d)")
    which.add_argument("--only-real", action="store_true", help="only (d)")
    args, _ = parser.parse_known_args()
    from ldreg_plugins.backends.cpu import default_threads

    torch.set_num_threads(args.threads or default_threads())
    if args.quick:
        args.examples, args.steps = 100, 40
    if args.rounds is None:
        args.rounds = 21 if args.quick else 3
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = [] if args.only_real else synthetic(args)
    if not args.no_real:
        rows += real_overhead(args)
    print(f"\n{'measure':58} {'seconds':>8} {'ratio':>6}  value / target")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        target = f"  [{r['target']}]" if r.get("target") else ""
        print(f"{r['measure']:58} {r['seconds']:8.2f} {ratio:>6}  {r['value']}{target}")
    return rows


def synthetic(args) -> list[dict]:
    """(a)-(c) on generated observations."""
    steps = list(observations(args.examples, args.steps))
    n_buckets, n_values = len(steps) * len(TYPES), len(steps) * len(TYPES) * args.examples
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
            times: dict[str, list[float]] = {"plain": [], "journaled": [], "sink": []}
            for r in range(args.rounds):  # interleaved, order reversed every other round: the machine is shared
                for side in ("plain", "journaled", "sink")[:: 1 if r % 2 == 0 else -1]:
                    db = client[f"bench_{side}{r}"]
                    if side == "sink":
                        times[side].append(time_sink(db, 1, steps, Path(tmp) / "spool-a.jsonl"))
                    else:
                        times[side].append(time_insert_many(db, docs, WriteConcern(j=side == "journaled")))
                    if r:  # keep round 0 for (c); the rest would only fill the disk
                        client.drop_database(db.name)
            plain, journaled, sink_s = (statistics.median(times[k]) for k in ("plain", "journaled", "sink"))

            def paired(base: str) -> str:
                """Each round's ratio (baseline seconds / sink seconds): their median and range."""
                ratios = sorted(b / s for b, s in zip(times[base], times["sink"]))
                return (f"{statistics.median(ratios):.2f} median of {len(ratios)} rounds' ratios, "
                        f"range {ratios[0]:.2f}-{ratios[-1]:.2f}")

            spread = {k: f"median of {args.rounds}, range {min(v):.3f}-{max(v):.3f} s" for k, v in times.items()}
            rows.append({"measure": "insert_many, default write concern (baseline)", "seconds": plain,
                         "value": f"{n_values / plain / 1e6:.2f}M values/s; {spread['plain']}", "ratio": 1.0})
            rows.append({"measure": "insert_many, journaled (j=True)", "seconds": journaled,
                         "value": f"{n_values / journaled / 1e6:.2f}M values/s; {spread['journaled']}",
                         "ratio": plain / journaled})
            rows.append({"measure": "(a) StoreSink: emit all + close (journaled)", "seconds": sink_s,
                         "value": f"{n_values / sink_s / 1e6:.2f}M values/s; {spread['sink']}; paired: {paired('plain')}",
                         "ratio": plain / sink_s, "target": "ratio >= 0.8"})
            rows.append({"measure": "    StoreSink vs journaled insert_many", "seconds": sink_s,
                         "value": f"paired: {paired('journaled')}", "ratio": journaled / sink_s,
                         "target": "ratio >= 0.9"})

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
    return rows


if __name__ == "__main__":
    main()

"""Probe-pass speed against the authors' way and against a bare batched forward, in one process.

The authors score a probing set one example and one response type at a time (batch 1, a full
fp32 log-softmax of every position). ldreg buckets by length, projects logits only at response
positions and chunks the fp32 statistics. The bare forward (``model(input_ids)`` on the same
buckets, nothing else) is the floor a probe pass could reach without sharing work; prompt
sharing (one prompt pass per example, its KV cache expanded over the response types) goes below
it. Every number is a ratio of timings taken in this same run on the same model and probes.

    python -m bench.bench_probe --quick
    python -m bench.bench_probe                                  # tiny and ~5M GPT-NeoX on CPU
    python -m bench.bench_probe --device cuda --dtype bf16 --size pythia410m-shaped --n 7000 --len 256
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ldreg.dynamics.batching import length_buckets, padding_fraction
from ldreg.dynamics.logprobs import EncodedPair, collate
from ldreg.dynamics.probes import logps_one_by_one, probe
from ldreg.models import tiny_neox_config, train_tokenizer

PROBES = Path(__file__).resolve().parents[1] / "ldreg" / "data" / "resources" / "authors-probes" / "helpful-base"
TYPES = ("chosen", "rejected", "chosen_gptsemantic", "irr_hum", "random_permute")
SIZES = {  # hidden, layers, heads, vocab (None: the tokenizer's)
    "tiny": (64, 2, 4, None),
    "5m": (256, 6, 4, None),
    "pythia410m-shaped": (1024, 24, 16, 50304),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_records(n: int) -> list[dict]:
    records = []
    for name in ("formal_prob_train.jsonl", "formal_prob_test.jsonl"):
        with open(PROBES / name) as f:
            records += [json.loads(line) for line in f]
    return list(itertools.islice(itertools.cycle(records), n))


def encode_probes(tokenizer, records: list[dict], types, max_len: int) -> dict[str, list[EncodedPair]]:
    """Prompts keep their last max_len/2 tokens, responses fill the rest (the authors' 512/256 split)."""
    out = {}
    for t in types:
        pairs = []
        for r in records:
            prompt = tuple(tokenizer(r["prompt"])["input_ids"][-(max_len // 2):])
            response = tuple(tokenizer(r[t])["input_ids"][: max_len - len(prompt)]) or (tokenizer.eos_token_id,)
            pairs.append(EncodedPair(prompt, response))
        out[t] = pairs
    return out


def build_model(size: str, vocab: int, device: str, max_len: int):
    from transformers import GPTNeoXForCausalLM

    hidden, layers, heads, model_vocab = SIZES[size]
    torch.manual_seed(0)
    config = tiny_neox_config(model_vocab or vocab, hidden_size=hidden, layers=layers, heads=heads,
                              max_positions=max(2048, max_len))
    return GPTNeoXForCausalLM(config).to(device).eval()


def autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_forward(model, pairs_by_type, max_tokens: int, pad_id: int, device: str, dtype) -> None:
    """model(input_ids, attention_mask) on exactly the probe's buckets, and nothing else."""
    with torch.no_grad(), autocast(device, dtype):
        for pairs in pairs_by_type.values():
            for index in length_buckets([len(p) for p in pairs], max_tokens):
                batch = collate([pairs[i] for i in index], pad_id).to(device)
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def authors_way(model, pairs_by_type, device: str, dtype) -> dict[str, np.ndarray]:
    with autocast(device, dtype):
        return {t: logps_one_by_one(model, pairs, device) for t, pairs in pairs_by_type.items()}


def bench_size(size: str, args, tokenizer, pairs_by_type) -> dict:
    device, dtype = args.device, DTYPES[args.dtype]
    model = build_model(size, len(tokenizer), device, args.len)
    pad = tokenizer.pad_token_id
    kw = dict(max_tokens_per_batch=args.max_tokens, pad_id=pad)
    if dtype != torch.float32:
        from ldreg.backends import resolve_backend
        from ldreg.registry import get_plugins

        kw.update(backend=resolve_backend("cuda" if device.startswith("cuda") else "cpu", get_plugins().backends),
                  dtype=dtype)
    runs = {
        "probe": lambda pairs, ids: probe(model, pairs, ids, **kw),
        "probe_shared_prompts": lambda pairs, ids: probe(model, pairs, ids, share_prompts=True, **kw),
        "bare_forward": lambda pairs, ids: bare_forward(model, pairs, args.max_tokens, pad, device, dtype),
    }
    if not args.skip_authors:
        m = min(args.n, args.authors_subset or args.n)  # batch-1 cost is linear in examples: time m, scale
        runs["authors"] = lambda pairs, ids: authors_way(model, {t: p[:m] for t, p in pairs.items()}, device, dtype)
    ids = list(range(args.n))
    few = {t: p[:4] for t, p in pairs_by_type.items()}
    for fn in runs.values():  # warm-up (kernels, allocator, caches) on a few probes, not timed
        fn(few, ids[:4])
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(lambda: fn(pairs_by_type, ids), device))
    ours = probe(model, pairs_by_type, ids, **kw)
    shared = probe(model, pairs_by_type, ids, share_prompts=True, **kw)
    check = {"max_abs_diff_shared_vs_probe": float(max(np.abs(shared[t]["logp_sum"] - ours[t]["logp_sum"]).max()
                                                       for t in pairs_by_type))}
    if not args.skip_authors:
        ref = authors_way(model, {t: p[:m] for t, p in pairs_by_type.items()}, device, dtype)
        check["max_abs_diff_probe_vs_authors"] = float(max(np.abs(ref[t] - ours[t]["logp_sum"][:m]).max()
                                                           for t in pairs_by_type))
    if "authors" in times:
        times["authors"] = [t * args.n / m for t in times["authors"]]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    report = {
        "size": size, "params": sum(p.numel() for p in model.parameters()),
        "seconds_median": med, "seconds_all": times,
        "spread_max_over_min": {n: max(ts) / min(ts) for n, ts in times.items()},
        "ratios": {
            "probe_over_bare_forward": med["probe"] / med["bare_forward"],
            "bare_forward_over_shared": med["bare_forward"] / med["probe_shared_prompts"],
            "probe_over_shared": med["probe"] / med["probe_shared_prompts"],
        },
        "check": check,
        "authors_timed_on": m if "authors" in runs else 0,
    }
    if "authors" in med:
        report["ratios"]["authors_over_probe"] = med["authors"] / med["probe"]
        report["ratios"]["authors_over_shared"] = med["authors"] / med["probe_shared_prompts"]
        report["ratio_per_repeat_authors_over_probe"] = [a / p for a, p in zip(times["authors"], times["probe"])]
    return report


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 probes of at most 256 tokens, 2 repeats: a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--size", action="append", choices=sorted(SIZES),
                        help="model size (repeatable); default tiny and 5m")
    parser.add_argument("--n", type=int, default=100, help="probe examples (HH records, cycled past 1000)")
    parser.add_argument("--len", type=int, default=512, help="max tokens per sequence; prompts keep len/2")
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated response types")
    parser.add_argument("--max-tokens", type=int, default=8192, help="padded tokens per probe batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-authors", action="store_true", help="leave out the batch-1 baseline (slow at scale)")
    parser.add_argument("--authors-subset", type=int, default=500,
                        help="time the batch-1 baseline on this many examples and scale to --n (0: all)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: what ldreg's cpu backend uses, half the cores)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        from ldreg_plugins.backends.cpu import default_threads

        torch.set_num_threads(args.threads or default_threads())
    if args.quick:
        args.n, args.len, args.repeats, args.size = min(args.n, 16), min(args.len, 256), 2, args.size or ["tiny"]
    sizes = args.size or ["tiny", "5m"]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    records = load_records(args.n)
    tokenizer = train_tokenizer([r["prompt"] + r["chosen"] for r in load_records(400)], vocab_size=512)
    pairs_by_type = encode_probes(tokenizer, records, types, args.len)
    lengths = [len(p) for pairs in pairs_by_type.values() for p in pairs]
    buckets = length_buckets(lengths, args.max_tokens)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    header = {"n": args.n, "types": types, "sequences": len(lengths), "tokens": sum(lengths),
              "mean_len": float(np.mean(lengths)), "max_len": max(lengths),
              "padding_fraction_bucketed": padding_fraction(lengths, buckets), "machine": machine}
    print(json.dumps(header))
    reports = []
    for size in sizes:
        report = {**bench_size(size, args, tokenizer, pairs_by_type), "setup": header}
        reports.append(report)
        r = report["ratios"]
        print(f"[{size}: {report['params'] / 1e6:.2f}M params] median s: "
              + ", ".join(f"{k}={v:.3f}" for k, v in report["seconds_median"].items()))
        print("   ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()))
        print("   spread max/min over repeats: "
              + ", ".join(f"{k}={v:.2f}" for k, v in report["spread_max_over_min"].items()))
        print("   check: " + json.dumps(report["check"]))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return reports


if __name__ == "__main__":
    main()

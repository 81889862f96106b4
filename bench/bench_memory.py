"""Peak memory of SFT -> DPO on a real 49k-vocabulary model, and the probe pass with shared prompts.

A real vocabulary makes every [B, T, V] fp32 tensor large (batch 8 x 256 x 49,152 = 400 MB), so
what ldreg builds around the model's own forward and backward can cost more than the model. This
benchmark runs the same steps on the same pairs two ways, each in a fresh process so that peak RSS
(``ru_maxrss``) belongs to one variant:

- ``plain``: the steps written out in plain PyTorch (log-softmax, gather, DPO against a deepcopy
  reference under no_grad, RMSprop): the floor to compare against;
- ``ldreg``: ldreg's Trainer (SFT stage, then DPO with its frozen reference), with its residual
  summaries and a probe pass (shared prompts) at the start of each stage and at the end.

Then the probe pass alone, per response type against prompts shared, on the real-tier probing set
(tokens fed to the model and seconds, same process, same model).

    python -m bench.bench_memory                 # SmolLM2-135M (`ldreg models prepare smollm2-135m`)
    python -m bench.bench_memory --steps 1 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

MODEL = "smollm2-135m"
PROBE_TYPES = ("chosen", "rejected", "chosen_rephrase_semantic", "chosen_rephrase_format",
               "rejected_rephrase_semantic", "irrelevant_test", "random_sentence", "chosen_permuted")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _pairs(tokenizer, n: int, length: int):
    """n authors' HH pairs, prompt cut to its last length/2 tokens, responses to the rest."""
    from ldreg.data.adapters import load_preferences
    from ldreg.data.authors import resolve_source
    from ldreg.data.tokenize import TokenLimits, encode_preference

    limits = TokenLimits(max_length=length, max_prompt_length=length // 2)
    examples = load_preferences(str(resolve_source("authors:helpful-base/train")), limit=n)
    return [encode_preference(tokenizer, e.prompt, e.chosen, e.rejected, limits) for e in examples]


def plain(model, pairs, pad: int, steps: int, batch: int) -> list[float]:
    """SFT then DPO written out: what a person would write without ldreg."""
    from ldreg.dynamics.logprobs import collate

    def logps(m, b):
        logits = m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        labels = b.labels[:, 1:]
        mask = labels != -100
        lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(-1)

    times = []
    model.train()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-6)
    for s in range(steps):
        start = time.perf_counter()
        b = collate([c for c, _ in pairs[s * batch:(s + 1) * batch]], pad)
        loss = -logps(model, b).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        times.append(time.perf_counter() - start)
    del opt
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-6)
    for s in range(steps):
        start = time.perf_counter()
        chunk = pairs[s * batch:(s + 1) * batch]
        b = collate([c for c, _ in chunk] + [r for _, r in chunk], pad)
        pol = logps(model, b)
        with torch.no_grad():
            rl = logps(ref, b)
        h = (pol[:batch] - rl[:batch]) - (pol[batch:] - rl[batch:])
        loss = -torch.nn.functional.logsigmoid(0.1 * h).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def with_ldreg(model, tokenizer, pairs, pad: int, steps: int, batch: int) -> list[float]:
    """The same steps through ldreg's Trainer, with residual summaries and probe passes."""
    from ldreg.backends import resolve_backend
    from ldreg.dynamics.probes import probe
    from ldreg.registry import get_plugins
    from ldreg.spec import StageSpec
    from ldreg.train import EncodedExample, Trainer

    plugins = get_plugins()
    backend = resolve_backend("cpu", plugins.backends)
    probes = _probe_pairs(tokenizer, 8)

    def observer(m, clock):
        probe(m, probes, list(range(8)), pad_id=pad, max_tokens_per_batch=8192, share_prompts=True)

    class Sink:
        def emit(self, obs):
            pass

        def close(self):
            pass

    times: list[float] = []
    trainer = Trainer(model=model, backend=backend, pad_id=pad, observer=observer, sink=Sink(), probe_every=10**9,
                      losses={n: plugins.losses.get(n) for n in ("sft", "dpo")}, progress=False,
                      log_scalar=lambda name, value, step: times.append(time.perf_counter()) if name == "loss" else None)
    data = [EncodedExample(i, c, r) for i, (c, r) in enumerate(pairs[:steps * batch])]
    stages = [StageSpec(loss="sft", name="sft", epochs=1, lr=1e-6, batch_size=batch),
              StageSpec(loss="dpo", name="dpo", epochs=1, lr=1e-6, batch_size=batch)]
    start = time.perf_counter()
    trainer.run(stages, data)
    return [start] + times  # timestamps; per-step times include probe passes


def _probe_pairs(tokenizer, n: int, length: int = 256):
    from ldreg.data.authors import resolve_source
    from ldreg.data.probing import encode_probing_set, import_authors_probes
    from ldreg.data.tokenize import TokenLimits

    full = import_authors_probes(resolve_source("authors:helpful-base/test"))
    from ldreg.data.probing import ProbingSet

    subset = ProbingSet("bench", full.examples[:n], {t: full.responses[t][:n] for t in PROBE_TYPES}, full.metadata)
    return dict(encode_probing_set(subset, tokenizer, TokenLimits(max_length=length, max_prompt_length=length // 2)))


def probe_sharing(model, tokenizer, pad: int, n: int, repeats: int) -> dict:
    from ldreg.dynamics.probes import probe

    pairs = _probe_pairs(tokenizer, n)
    ids = list(range(n))
    per_type_tokens = sum(len(p) for col in pairs.values() for p in col)
    first = next(iter(pairs.values()))
    shared_tokens = sum(len(p.prompt_ids) for p in first) + sum(len(p.response_ids) for col in pairs.values() for p in col)
    seconds = {"per_type": [], "shared": []}
    for _ in range(repeats):
        for name, share in (("per_type", False), ("shared", True)):
            start = time.perf_counter()
            out = probe(model, pairs, ids, pad_id=pad, max_tokens_per_batch=8192, share_prompts=share)
            seconds[name].append(time.perf_counter() - start)
            if share:
                shared_out = out
            else:
                single_out = out
    diff = max(float(abs(shared_out[t]["logp_sum"] - single_out[t]["logp_sum"]).max()) for t in pairs)
    best = {k: min(v) for k, v in seconds.items()}
    return {"examples": n, "types": len(pairs), "tokens_per_type": per_type_tokens, "tokens_shared": shared_tokens,
            "token_ratio": per_type_tokens / shared_tokens, "seconds": seconds,
            "time_ratio_best": best["per_type"] / best["shared"], "max_abs_logp_diff": diff}


def child(args) -> None:
    from ldreg import zoo
    from ldreg.models import load_model, load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    path = zoo.prepare(MODEL, progress=lambda line: print(line, file=sys.stderr))
    tokenizer, model = load_tokenizer(path), load_model(path)
    pad = tokenizer.pad_token_id
    pairs = _pairs(tokenizer, args.steps * args.batch, args.len)
    widths = [max(len(c), len(r)) for c, r in pairs]
    loaded = _peak_mb()
    result = {"variant": args.variant, "loaded_peak_mb": loaded, "max_width": max(widths)}
    if args.variant == "plain":
        result["step_seconds"] = plain(model, pairs, pad, args.steps, args.batch)
    elif args.variant == "ldreg":
        torch.set_num_threads(args.threads)
        stamps = with_ldreg(model, tokenizer, pairs, pad, args.steps, args.batch)
        result["step_seconds"] = [b - a for a, b in zip(stamps, stamps[1:])]
    else:
        result.update(probe_sharing(model, tokenizer, pad, args.probe_n, args.repeats))
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("plain", "ldreg", "probe"))
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per stage")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--len", type=int, default=256, help="tokens per sequence at most")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--probe-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one step per stage, 8 probe examples")
    args, _ = parser.parse_known_args()
    if args.variant:
        return child(args)
    from ldreg import zoo

    named = zoo.get(MODEL)
    if zoo.state(named) == "wheel absent":
        print(f"bench_memory: skipped, {MODEL} needs the wheel {named.wheel} ({named.install})")
        return
    if args.quick:
        args.steps, args.probe_n, args.repeats = 1, 8, 1
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{args.threads} thread(s)", "batch": f"{args.batch} pairs x <= {args.len} tokens",
              "steps_per_stage": args.steps}
    for variant in ("plain", "ldreg", "probe"):
        cmd = [sys.executable, "-m", "bench.bench_memory", "--variant", variant, "--steps", str(args.steps),
               "--batch", str(args.batch), "--len", str(args.len), "--threads", str(args.threads),
               "--probe-n", str(args.probe_n), "--repeats", str(args.repeats)]
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        report[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        report[variant]["wall_seconds"] = round(time.perf_counter() - start, 1)
        print(variant, json.dumps(report[variant]), flush=True)
    report["peak_ratio_ldreg_over_plain"] = report["ldreg"]["peak_mb"] / report["plain"]["peak_mb"]
    print(json.dumps({k: report[k] for k in ("machine", "batch", "steps_per_stage", "peak_ratio_ldreg_over_plain")}))
    print(f"peak RSS: plain {report['plain']['peak_mb']:.0f} MB, ldreg {report['ldreg']['peak_mb']:.0f} MB "
          f"({report['peak_ratio_ldreg_over_plain']:.2f}x; target <= 1.2x); probe pass: tokens "
          f"{report['probe']['token_ratio']:.2f}x and time {report['probe']['time_ratio_best']:.2f}x lower with "
          f"shared prompts (target >= 2x)")


if __name__ == "__main__":
    main()

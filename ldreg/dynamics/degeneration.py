"""Degeneration probes: what the model writes during training, and how repetitive it has become
(docs/degeneration.md).

The paper reports that long DPO makes outputs repetitive (the squeezing effect piles mass on the
argmax). Log-probs under teacher forcing cannot show that; the text the model writes can. On the
spec's schedule (``probing.generation``) each probe prompt is continued greedily and/or by seeded
sampling through ``ldreg.sampling`` (the one generation path), and per continuation ldreg keeps the
text and:

    rep_4       repeated 4-gram rate: 1 - distinct 4-grams / 4-grams (Welleck et al. 2020, seq-rep-4)
    distinct_1  distinct unigrams / unigrams (Li et al. 2016)
    distinct_2  distinct bigrams / bigrams
    entropy     mean over the generated positions of the entropy (nats) of pi(.|prefix), the
                model's full next-token distribution at temperature 1
    length      generated tokens (EOS not counted)

All counted over the model's tokens. A rate over zero n-grams (a text shorter than n) is NaN:
"not measurable", never 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

from ldreg.observations import Observation
from ldreg.sampling import GREEDY, Sampling, sample_ids, step_seed

DEGENERATION_QUANTITIES = ("rep_4", "distinct_1", "distinct_2", "entropy", "length")


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[Hashable], n: int) -> float:
    """Distinct n-grams over all n-grams of one text; NaN when the text has none."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_rate(tokens: Sequence[Hashable], n: int = 4) -> float:
    """The share of n-grams that repeat an earlier one: 1 - distinct_n; NaN when there are none."""
    return 1.0 - distinct_n(tokens, n)


def mean_token_entropy(model: torch.nn.Module, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> float:
    """Mean entropy (nats) of pi(.|x, y_<t) over the generated positions; NaN for an empty continuation."""
    if not new_ids:
        return float("nan")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(new_ids)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def text_metrics(tokens: Sequence[Hashable]) -> dict[str, float]:
    """The counted quantities of one continuation (entropy needs the model: ``mean_token_entropy``)."""
    return {"rep_4": repeated_ngram_rate(tokens, 4), "distinct_1": distinct_n(tokens, 1),
            "distinct_2": distinct_n(tokens, 2), "length": float(len(tokens))}


@dataclass
class Generations:
    """Per decoding ("greedy" or "sampled"): one row per continuation, aligned lists."""

    example_ids: dict[str, list[int]]
    texts: dict[str, list[str]]
    values: dict[str, dict[str, list[float]]]


def generate_probes(model: torch.nn.Module, tokenizer, prompts: Sequence[Sequence[int]], example_ids: Sequence[int], *,
                    max_new_tokens: int, greedy: bool, samples: int, seed: int, step: int,
                    temperature: float = 1.0) -> Generations:
    """Continue each prompt (token ids) greedily and ``samples`` times by sampling.

    Sample k of prompt i at global ``step`` is seeded by ``step_seed(seed, step, i * samples + k)``,
    so a rerun (or a resumed run) writes exactly the same text at the same step.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    plans: list[tuple[str, Sampling, int]] = [("greedy", GREEDY, 1)] if greedy else []
    if samples:
        plans.append(("sampled", Sampling(True, temperature, 1.0), samples))
    ids: dict[str, list[int]] = {}
    texts: dict[str, list[str]] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for name, sampling, count in plans:
        ids[name], texts[name] = [], []
        values[name] = {q: [] for q in DEGENERATION_QUANTITIES}
        for i, (prompt, example_id) in enumerate(zip(prompts, example_ids)):
            for k in range(count):
                new = sample_ids(model, prompt, max_new_tokens, step_seed(seed, step, i * count + k), eos, pad,
                                 sampling)
                if new and new[-1] == eos:
                    new = new[:-1]
                row = {**text_metrics(new), "entropy": mean_token_entropy(model, prompt, new)}
                for q in DEGENERATION_QUANTITIES:
                    values[name][q].append(row[q])
                ids[name].append(int(example_id))
                texts[name].append(tokenizer.decode(new, skip_special_tokens=True))
    return Generations(ids, texts, values)


def generation_observations(generations: Generations, *, step: int, examples_seen: int, stage: str,
                            stage_index: int, probe_set: str, prompts: dict[int, str],
                            settings: dict) -> list[Observation]:
    """One kind-"generation" Observation per decoding (response_type "greedy"/"sampled"); the texts
    and their prompts (``prompts``: example id -> prompt text) in meta, aligned with ``example_ids``."""
    return [Observation(kind="generation", step=step, examples_seen=examples_seen, stage=stage,
                        stage_index=stage_index, probe_set=probe_set, response_type=name,
                        example_ids=generations.example_ids[name],
                        values={q: [float(v) for v in vals] for q, vals in generations.values[name].items()},
                        meta={"texts": generations.texts[name],
                              "prompts": [prompts.get(i, "") for i in generations.example_ids[name]], **settings})
            for name in generations.texts]

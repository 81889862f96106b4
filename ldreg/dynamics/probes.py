"""The probe pass: what the paper measures on a fixed probing set every N updates (docs/math.md §5).

For each response type and example, under teacher forcing, per example:

    logp_sum        log pi(y|x): sum of the response tokens' log-probs (the paper's quantity)
    n_tokens        number of response tokens
    logp_mean       logp_sum / n_tokens (NaN for an empty response: a mean of nothing)
    argmax_logp     sum over positions of log p(argmax token)  (the "argmax confidence")
    nonargmax       sum over positions of log(1 - p*), the authors' "all but argmax" term: log1p(-p*)
                    where p* < 1/2, else logsumexp of the non-argmax logits minus logsumexp of all, so
                    finite and exact even where p* rounds to 1 in fp32 (the authors' fp32
                    log(1 - p* + 1e-100) is NaN/-inf there)
    a_norm          mean over tokens of ||A_o||_F = sqrt(V ||pi||^2 + V - 2)  (the paper's definition)
    a_norm_authors  the authors' variant: ||pi|| averaged over tokens first, then the same formula
    g_norm          mean over tokens of ||pi - e_y||_2  (the SFT residual G of the observed response)
    energy          mean over tokens of 1 - pi(y)

Speed: sequences are bucketed by length (``batching.length_buckets``), logits are only projected
at the response positions where the model supports ``logits_to_keep`` (prompts are long in HH), and
the fp32 log-softmax runs over chunks of rows so that a [B, T, V] fp32 tensor is never built.
``share_prompts`` (the spec's ``probing.share_prompts``) computes each prompt once and reuses its
KV cache for every response type.
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ldreg.backends import Backend
from ldreg.dynamics.batching import length_buckets
from ldreg.dynamics.logprobs import IGNORE, EncodedPair, accepts_logits_to_keep, collate, sequence_logps
from ldreg.observations import Observation

QUANTITIES = ("logp_sum", "n_tokens", "logp_mean", "argmax_logp", "nonargmax",
              "a_norm", "a_norm_authors", "g_norm", "energy")

# Per-token sums accumulated per example; the quantities above are made from them.
_SUMS = ("logp", "argmax_logp", "nonargmax", "a_norm", "pi_norm", "g_norm", "energy", "n")

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # fp32 elements per log-softmax chunk (16 MiB)


def log1m_prob(z: Tensor, index: Tensor, logp: Tensor, lse: Tensor) -> Tensor:
    """log(1 - p_index) per row, accurate at both ends.

    Where p < 1/2, log1p(-p) is exact. Where p is near 1 (where fp32 rounds it to 1), the mass of
    every other token is summed directly: logsumexp of the logits without ``index`` minus the
    logsumexp of all. Never NaN for finite logits.
    """
    others = torch.logsumexp(z.scatter(-1, index.unsqueeze(-1), float("-inf")), dim=-1) - lse
    return torch.where(logp < -math.log(2), torch.log1p(-logp.exp()), others)


def token_statistics(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-token quantities of rows of logits [N, V] and their target tokens [N], in fp32.

    Every value is finite for finite logits: log(1 - p*) and 1 - pi(y) go through
    ``log1m_prob``, and ||pi - e_y||^2 is summed as (1 - pi_y)^2 + sum_{i != y} pi_i^2, never as
    a difference of nearly equal numbers.
    """
    z = logits.float()
    vocab = z.shape[-1]
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse.unsqueeze(-1)
    logp_y = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    top, arg = z.max(dim=-1)
    logp_star = top - lse
    p = logp.exp()
    pi_sq = p.square().sum(-1)
    not_y = p.scatter(-1, targets.unsqueeze(-1), 0.0)
    miss = log1m_prob(z, targets, logp_y, lse).exp()  # 1 - pi(y)
    return {
        "logp": logp_y,
        "argmax_logp": logp_star,
        "nonargmax": log1m_prob(z, arg, logp_star, lse),
        "a_norm": torch.sqrt(vocab * pi_sq + vocab - 2),
        "pi_norm": pi_sq.sqrt(),
        "g_norm": torch.sqrt(miss.square() + not_y.square().sum(-1)),
        "energy": miss,
    }


def _accumulate(sums: dict[str, Tensor], logits: Tensor, targets: Tensor, rows: Tensor,
                chunk_elements: int) -> None:
    """Add the per-token statistics of each logit row into its example's sums (float64)."""
    step = max(1, chunk_elements // max(1, logits.shape[-1]))
    for start in range(0, logits.shape[0], step):
        part = slice(start, start + step)
        stats = token_statistics(logits[part], targets[part])
        index = rows[part]
        for name, value in stats.items():
            sums[name].index_add_(0, index, value.double())
        sums["n"].index_add_(0, index, torch.ones_like(index, dtype=torch.float64))


_accepts_logits_to_keep = accepts_logits_to_keep


def response_logits(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                    **forward_kwargs) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at the positions that predict response tokens, flattened: (logits [N, V], targets, row).

    ``row`` says which batch row each logit belongs to. Where the model takes ``logits_to_keep``
    (HF causal LMs do), the output head runs only at those positions.
    """
    predicts = labels[:, 1:] != IGNORE
    keep = torch.cat([predicts, torch.zeros_like(predicts[:, :1])], dim=1)
    targets = labels[:, 1:][predicts]
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(predicts)[predicts]
    if _accepts_logits_to_keep(model):
        forward_kwargs["logits_to_keep"] = keep
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).logits
    if logits.dim() == 3:  # the model returned every position
        logits = logits[keep]
    return logits, targets, rows


def _finish(sums: dict[str, Tensor], vocab: int) -> dict[str, np.ndarray]:
    s = {k: v.cpu().numpy() for k, v in sums.items()}
    n = s["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pi = s["pi_norm"] / n
        return {
            "logp_sum": s["logp"],
            "n_tokens": n,
            "logp_mean": s["logp"] / n,
            "argmax_logp": s["argmax_logp"],
            "nonargmax": s["nonargmax"],
            "a_norm": s["a_norm"] / n,
            "a_norm_authors": np.sqrt(vocab * mean_pi**2 + vocab - 2),
            "g_norm": s["g_norm"] / n,
            "energy": s["energy"] / n,
        }


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class ForwardPlacement:
    """Where and in what precision the probe forward runs (a backend's autocast, else plain)."""

    def __init__(self, model: torch.nn.Module, backend: Backend | None, dtype: torch.dtype | None):
        self.device = backend.device() if backend is not None else _model_device(model)
        self.backend, self.dtype = backend, dtype

    def autocast(self):
        if self.backend is None or self.dtype is None:
            return contextlib.nullcontext()
        return self.backend.autocast(self.dtype)


def probe(model: torch.nn.Module, pairs_by_type: Mapping[str, Sequence[EncodedPair]],
          example_ids: Sequence[int], *, backend: Backend | None = None, dtype: torch.dtype | None = None,
          max_tokens_per_batch: int = 16384, pad_id: int = 0, share_prompts: bool = False,
          chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, dict[str, np.ndarray]]:
    """Every quantity of ``QUANTITIES`` per response type, one value per example (aligned with ids).

    ``backend``/``dtype`` choose the device and autocast of the forward; the statistics are always
    fp32 (sums float64). The model is put in eval mode for the pass and given back as it was.
    ``share_prompts``: run each prompt once and reuse its KV cache for every response type
    (needs a model with a KV cache). An example whose prompt differs between types (truncation
    can cut a prompt to fit a long response) is probed type by type instead, with equal results.
    """
    _check_aligned(pairs_by_type, example_ids)
    where = ForwardPlacement(model, backend, dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if share_prompts:
                return _probe_sharing(model, pairs_by_type, where, max_tokens_per_batch, pad_id, chunk_elements)
            return _probe_each_type(model, pairs_by_type, where, max_tokens_per_batch, pad_id, chunk_elements)
    finally:
        model.train(was_training)


def _check_aligned(pairs_by_type: Mapping[str, Sequence[EncodedPair]], example_ids: Sequence[int]) -> None:
    for rtype, pairs in pairs_by_type.items():
        if len(pairs) != len(example_ids):
            raise ValueError(
                f"response type {rtype!r} has {len(pairs)} pairs but there are {len(example_ids)} example ids; "
                "give one EncodedPair per example id, in the same order"
            )


def _new_sums(n: int, device: torch.device) -> dict[str, Tensor]:
    return {k: torch.zeros(n, dtype=torch.float64, device=device) for k in _SUMS}


def _probe_each_type(model, pairs_by_type: Mapping[str, Sequence[EncodedPair]], where: ForwardPlacement,
                     max_tokens: int, pad_id: int, chunk_elements: int) -> dict[str, dict[str, np.ndarray]]:
    return {rtype: _probe_type(model, list(pairs), where, max_tokens, pad_id, chunk_elements)
            for rtype, pairs in pairs_by_type.items()}


def prompt_sharing(pairs_by_type: Mapping[str, Sequence[EncodedPair]]) -> list[bool]:
    """Per example: can its prompt be run once for every type (the same non-empty prompt in all)?

    The one place this is decided; the runner records the count with each probe observation.
    """
    types = list(pairs_by_type)
    n = len(pairs_by_type[types[0]]) if types else 0

    def same_prompt(i: int) -> bool:
        prompt = pairs_by_type[types[0]][i].prompt_ids
        return bool(prompt) and all(pairs_by_type[t][i].prompt_ids == prompt for t in types)

    return [same_prompt(i) for i in range(n)]


def _probe_sharing(model, pairs_by_type: Mapping[str, Sequence[EncodedPair]], where: ForwardPlacement,
                   max_tokens: int, pad_id: int, chunk_elements: int) -> dict[str, dict[str, np.ndarray]]:
    """Shared prompts for the examples whose prompt is the same in every type; the rest type by type."""
    types = list(pairs_by_type)
    sharing = prompt_sharing(pairs_by_type)
    n = len(sharing)
    if all(sharing):
        return _probe_shared(model, pairs_by_type, where, max_tokens, pad_id, chunk_elements)
    shared = [i for i in range(n) if sharing[i]]
    rest = [i for i in range(n) if not sharing[i]]
    parts = [(rest, _probe_each_type(model, {t: [p[i] for i in rest] for t, p in pairs_by_type.items()},
                                     where, max_tokens, pad_id, chunk_elements))]
    if shared:
        parts.append((shared, _probe_shared(model, {t: [p[i] for i in shared] for t, p in pairs_by_type.items()},
                                            where, max_tokens, pad_id, chunk_elements)))
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in types:
        out[t] = {}
        for quantity, first in parts[0][1][t].items():
            merged = np.empty(n, dtype=first.dtype)
            for index, result in parts:
                merged[index] = result[t][quantity]
            out[t][quantity] = merged
    return out


def _probe_type(model, pairs: list[EncodedPair], where: ForwardPlacement, max_tokens: int, pad_id: int,
                chunk_elements: int) -> dict[str, np.ndarray]:
    sums = _new_sums(len(pairs), where.device)
    vocab = 0
    for batch_index in length_buckets([len(p) for p in pairs], max_tokens):
        batch = collate([pairs[i] for i in batch_index], pad_id).to(where.device)
        with where.autocast():
            logits, targets, rows = response_logits(model, batch.input_ids, batch.attention_mask, batch.labels)
        vocab = logits.shape[-1]
        index = torch.tensor(batch_index, device=where.device)[rows]
        _accumulate(sums, logits, targets, index, chunk_elements)
    return _finish(sums, vocab)


def _probe_shared(model, pairs_by_type: Mapping[str, Sequence[EncodedPair]], where: ForwardPlacement,
                  max_tokens: int, pad_id: int, chunk_elements: int) -> dict[str, dict[str, np.ndarray]]:
    """Prompts once (left-padded, KV cached), then all response types of each example in one batch;
    every example's prompt is the same non-empty one in every type (``_probe_sharing`` checks)."""
    types = list(pairs_by_type)
    k = len(types)
    n = len(next(iter(pairs_by_type.values()))) if types else 0
    sums = [_new_sums(n, where.device) for _ in types]
    # cost of an example: its prompt once plus K rows padded to its longest response
    cost = [len(pairs_by_type[types[0]][i].prompt_ids) + k * max(len(pairs_by_type[t][i].response_ids) for t in types)
            for i in range(n)]
    vocab = 0
    for batch_index in length_buckets(cost, max_tokens):
        rows = [[pairs_by_type[t][i] for t in types] for i in batch_index]
        with where.autocast():
            logits, targets, row = _shared_forward(model, rows, pad_id, where.device)
        vocab = logits.shape[-1]
        row_type = row % k
        example = torch.tensor(batch_index, device=where.device)[row // k]
        for j in range(k):
            sel = row_type == j
            _accumulate(sums[j], logits[sel], targets[sel], example[sel], chunk_elements)
    return {t: _finish(sums[j], vocab) for j, t in enumerate(types)}


def _shared_forward(model, rows: list[list[EncodedPair]], pad_id: int, device: torch.device):
    """One prompt pass and one response pass for a batch; rows are (example, type) in order."""
    k = len(rows[0])
    prompts = [r[0].prompt_ids for r in rows]
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left-padded: the last column is every prompt's last token
        prompt_ids[i, width - len(p):] = torch.tensor(p)
        prompt_mask[i, width - len(p):] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                **({"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}))
    first = out.logits[:, -1, :].repeat_interleave(k, dim=0)  # predicts each response's first token
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)

    responses = [pair.response_ids for r in rows for pair in r]
    rwidth = max(len(r) for r in responses)
    resp_ids = torch.full((len(responses), rwidth), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((len(responses), rwidth), dtype=torch.long)
    labels = torch.full((len(responses), rwidth), IGNORE, dtype=torch.long)
    for i, r in enumerate(responses):
        resp_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        resp_mask[i, : len(r)] = 1
        labels[i, : len(r)] = resp_ids[i, : len(r)]
    resp_ids, resp_mask, labels = resp_ids.to(device), resp_mask.to(device), labels.to(device)
    full_mask = torch.cat([prompt_mask.repeat_interleave(k, dim=0), resp_mask], dim=1)
    start = prompt_mask.sum(-1).repeat_interleave(k).unsqueeze(1)
    resp_positions = start + torch.arange(rwidth, device=device).unsqueeze(0)
    rest, rest_targets, rest_rows = response_logits(model, resp_ids, full_mask, labels,
                                                    position_ids=resp_positions, past_key_values=cache)
    first_rows = torch.arange(len(responses), device=device)
    has_token = resp_mask[:, 0].bool()
    logits = torch.cat([first[has_token], rest])
    targets = torch.cat([resp_ids[:, 0][has_token], rest_targets])
    return logits, targets, torch.cat([first_rows[has_token], rest_rows])


def logps_one_by_one(model: torch.nn.Module, pairs: Sequence[EncodedPair], device: torch.device | str | None = None,
                     ) -> np.ndarray:
    """log pi(y|x) the authors' way: one unpadded forward per example, fp32 log-softmax of every
    position. The reference the batched probe must match, and the benchmark's baseline."""
    device = device or _model_device(model)
    out = np.empty(len(pairs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, pair in enumerate(pairs):
                batch = collate([pair], pad_id=0).to(device)
                logits = model(input_ids=batch.input_ids).logits
                out[i] = float(sequence_logps(logits, batch.labels)[0])
    finally:
        model.train(was_training)
    return out


def probe_observations(result: Mapping[str, Mapping[str, np.ndarray]], example_ids: Sequence[int], *,
                       step: int, examples_seen: int, stage: str, stage_index: int, probe_set: str,
                       meta: Mapping | None = None) -> list[Observation]:
    """One kind-"probe" Observation per response type, each quantity as a list of floats."""
    return [
        Observation(kind="probe", step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
                    probe_set=probe_set, response_type=rtype, example_ids=[int(i) for i in example_ids],
                    values={q: [float(v) for v in values[q]] for q in QUANTITIES if q in values},
                    meta=dict(meta or {}))
        for rtype, values in result.items()
    ]


def a_norm_bounds(vocab: int) -> tuple[float, float]:
    """||A_o||_F for a uniform pi and for a one-hot pi: the range a_norm lives in."""
    return math.sqrt(vocab - 1), math.sqrt(2 * vocab - 2)

"""CHES, the centered hidden embedding similarity of a preference pair (Razin et al., ICLR 2025).

Razin et al. show that how far DPO displaces log pi(y+) is predicted, before training, by how
similar the two responses' last-layer hidden states are:

    CHES(x, y+, y-)   = <sum_k h+_k, sum_k h-_k> - ||sum_k h+_k||^2
    CHES_norm         = <mean_k h+_k, mean_k h-_k> - ||mean_k h+_k||^2     (length-normalised)

where h_k is the last layer's hidden state (the one the output head reads) at the position that
predicts response token k. A higher CHES predicts a larger fall of log pi(y+). It needs hidden
states the probe pass never keeps, so it is its own (cheap, forward-only) pass on a schedule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ldreg.dynamics.batching import length_buckets
from ldreg.dynamics.logprobs import IGNORE, EncodedPair, collate
from ldreg.observations import Observation

KIND = "ches"
RESPONSE_TYPE = "pair"
QUANTITIES = ("ches", "ches_norm")


def ches_from_hidden(h_chosen: Tensor, h_rejected: Tensor) -> tuple[float, float]:
    """(CHES, length-normalised CHES) of one pair from hidden states [T+, D] and [T-, D], in float64."""
    a, b = h_chosen.double(), h_rejected.double()
    s_pos, s_neg = a.sum(0), b.sum(0)
    m_pos, m_neg = s_pos / max(a.shape[0], 1), s_neg / max(b.shape[0], 1)
    return float(s_pos @ s_neg - s_pos @ s_pos), float(m_pos @ m_neg - m_pos @ m_pos)


def response_hidden_states(model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int = 0,
                           max_tokens_per_batch: int = 8192) -> list[Tensor]:
    """Per pair, the last layer's hidden states at the positions predicting its response tokens [T, D]."""
    device = next(model.parameters()).device
    out: list[Tensor | None] = [None] * len(pairs)
    for batch_index in length_buckets([len(p) for p in pairs], max_tokens_per_batch):
        batch = collate([pairs[i] for i in batch_index], pad_id).to(device)
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       output_hidden_states=True).hidden_states[-1]
        predicts = batch.labels[:, 1:] != IGNORE  # position t predicts token t + 1
        for row, i in enumerate(batch_index):
            out[i] = hidden[row, :-1][predicts[row]].float().cpu()
    return out  # type: ignore[return-value]


def ches(model: torch.nn.Module, chosen: Sequence[EncodedPair], rejected: Sequence[EncodedPair], *, pad_id: int = 0,
         max_tokens_per_batch: int = 8192) -> dict[str, np.ndarray]:
    """CHES and its length-normalised form per pair (NaN where a response is empty). Eval mode, no grad."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected responses; give one of each per pair")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            h_pos = response_hidden_states(model, chosen, pad_id, max_tokens_per_batch)
            h_neg = response_hidden_states(model, rejected, pad_id, max_tokens_per_batch)
    finally:
        model.train(was_training)
    scores = [ches_from_hidden(a, b) if len(a) and len(b) else (float("nan"), float("nan")) for a, b in zip(h_pos, h_neg)]
    return {"ches": np.array([s[0] for s in scores]), "ches_norm": np.array([s[1] for s in scores])}


def ches_observation(result: dict[str, np.ndarray], example_ids: Sequence[int], *, step: int, examples_seen: int,
                     stage: str, stage_index: int, probe_set: str, chosen: str, rejected: str) -> Observation:
    """One kind-"ches" observation: both scores per example, the response types named in meta."""
    return Observation(kind=KIND, step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
                       probe_set=probe_set, response_type=RESPONSE_TYPE, example_ids=[int(i) for i in example_ids],
                       values={q: [float(v) for v in result[q]] for q in QUANTITIES},
                       meta={"chosen": chosen, "rejected": rejected, "hidden": "last layer, response positions"})

"""Teacher-forced response log-probabilities: the one quantity every loss and probe is built on.

A sequence is chi = [x; y]; only the response tokens y count (prompt masked out), and
"log pi(y|x)" is the SUM of their log-probabilities (MATH.md's convention). Batches are
right-padded; ``labels`` holds -100 wherever a position is not a response token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class EncodedPair:
    """A tokenised (prompt, response): what the engine feeds a model."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class Batch:
    """Right-padded model inputs; ``labels`` marks response tokens (IGNORE elsewhere)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """Concatenate prompt and response, right-pad to the longest, label only the response."""
    width = max(len(p) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for i, p in enumerate(pairs):
        ids = list(p.prompt_ids) + list(p.response_ids)
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        labels[i, len(p.prompt_ids) : len(ids)] = torch.tensor(p.response_ids, dtype=torch.long)
    return Batch(input_ids, attention, labels)


def shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Align logits at position t with the token at t+1: (logits, targets, mask)."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE
    targets = labels.masked_fill(~mask, 0)
    return logits, targets, mask


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log pi(y_t | chi_<t), at least fp32 (zeros off the response), and the response mask."""
    logits, targets, mask = shifted(logits, labels)
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    per_token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return per_token * mask, mask


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of response-token log-probs, number of response tokens), each of shape [B]."""
    per_token, mask = token_logps(logits, labels)
    return per_token.sum(-1), mask.sum(-1)

"""Teacher-forced response log-probabilities: the one quantity every loss and probe is built on.

A sequence is chi = [x; y]; only the response tokens y count (prompt masked out), and
"log pi(y|x)" is the SUM of their log-probabilities (docs/math.md §1's convention). Batches are
right-padded; ``labels`` holds -100 wherever a position is not a response token.
"""

from __future__ import annotations

import inspect
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


# Elements of [B, t, V] handled at once: 16M fp32 values (64 MiB), whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 24


def token_logps(logits: Tensor, labels: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Per-token log pi(y_t | chi_<t), at least fp32 (zeros off the response), and the response mask.

    Computed as z_y - logsumexp(z) over chunks of positions, so no [B, T, V] log-softmax (nor an fp32
    copy of bf16 logits) is ever built, and autograd saves nothing vocabulary-sized: with a 49k
    vocabulary the full log-softmax and its gradient would cost more than the model itself. Only
    [B, T] values are kept; the backward rebuilds softmax one chunk at a time.
    """
    logits, targets, mask = shifted(logits, labels)
    batch, width, vocab = logits.shape
    step = max(1, chunk_elements // max(1, batch * vocab))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    pieces = []
    for z, y in zip(logits.split(step, dim=1), targets.split(step, dim=1)):
        z = z.to(dtype)
        pieces.append(z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    per_token = torch.cat(pieces, dim=1) if pieces else logits.new_zeros((batch, 0), dtype=dtype)
    return per_token * mask, mask


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of response-token log-probs, number of response tokens), each of shape [B]."""
    per_token, mask = token_logps(logits, labels)
    return per_token.sum(-1), mask.sum(-1)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """HF causal LMs take ``logits_to_keep``: the output head then runs only where asked."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def model_sequence_logps(model: torch.nn.Module, batch: Batch,
                         chunk_elements: int = CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """``sequence_logps`` of ``model`` on ``batch``, projecting only the positions that predict a
    response token (HH prompts are often most of a sequence, and each projected position costs a
    vocabulary of fp32 values). For a frozen model (the reference); the values equal
    ``sequence_logps(model(...).logits, labels)`` up to float rounding."""
    labels = batch.labels
    if not accepts_logits_to_keep(model):
        return sequence_logps(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, labels)
    predicts = labels[:, 1:] != IGNORE
    keep = torch.cat([predicts, torch.zeros_like(predicts[:, :1])], dim=1)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that ignored the mask returned every position
        logits = logits[keep]
    targets = labels[:, 1:][predicts]
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(predicts)[predicts]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    sums = torch.zeros(labels.shape[0], dtype=dtype, device=labels.device)
    step = max(1, chunk_elements // max(1, logits.shape[-1]))
    for start in range(0, logits.shape[0], step):
        z = logits[start:start + step].to(dtype)
        y = targets[start:start + step]
        sums.index_add_(0, rows[start:start + step], z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1))
    return sums, predicts.sum(-1)

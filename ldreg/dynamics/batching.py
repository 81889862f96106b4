"""Length bucketing: group sequences of similar length so that padding does not eat the batching gain.

Probe sets mix short and long responses; a batch padded to its longest member wastes the
difference on every row. Sorting by length and cutting batches by a token budget
(rows x longest row) keeps the padded area close to the real tokens, and bounds memory.
"""

from __future__ import annotations

from typing import Sequence


def length_buckets(lengths: Sequence[int], max_tokens_per_batch: int,
                   max_batch_size: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches, longest first.

    Each batch satisfies ``len(batch) * max(lengths in batch) <= max_tokens_per_batch`` (a single
    sequence longer than the budget still gets a batch of its own) and, when given,
    ``len(batch) <= max_batch_size``. Longest first, so a memory error shows on the first batch.
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be a positive number of tokens, not {max_tokens_per_batch}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * new_width > max_tokens_per_batch):
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the padded area that is padding: what bucketing is meant to keep small."""
    area = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths) / area if area else 0.0

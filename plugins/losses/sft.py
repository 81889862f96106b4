"""Supervised finetuning: L = -log pi(y+|x), and the paper's "extend" (SFT on y+ and y-).

G = pi - e_{y+} on every token of y+ (docs/math.md §4). Log-probabilities are sums over response
tokens; the batch loss is their mean over examples, as in the authors' code.
"""

from __future__ import annotations

import torch

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import require


def sft_loss(logps: SequenceLogps) -> LossOutput:
    loss = -logps.chosen.mean()
    return LossOutput(loss, detached_metrics(**{"logps/chosen": logps.chosen}))


def extend_loss(logps: SequenceLogps) -> LossOutput:
    """SFT on both (x, y+) and (x, y-): the mean over the 2B sequences."""
    require(logps, "extend_sft", "rejected")
    both = torch.cat([logps.chosen, logps.rejected])
    loss = -both.mean()
    return LossOutput(loss, detached_metrics(**{"logps/chosen": logps.chosen, "logps/rejected": logps.rejected}))


SFT = LossDefinition(
    name="sft",
    compute=sft_loss,
    description="Supervised finetuning on the chosen response: -log pi(y+|x).",
)

EXTEND = LossDefinition(
    name="extend_sft",
    compute=extend_loss,
    description="The paper's 'extend' (Sec. 4.3): SFT on both y+ and y-, before DPO.",
    needs_rejected=True,
)

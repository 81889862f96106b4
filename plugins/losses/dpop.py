"""DPO-Positive (Pal et al. 2024, "Smaug"): DPO with a penalty for letting log pi(y+) fall below
the reference's, the paper's fix for the very decrease of y+ that the squeezing effect describes.

    L = -log sigma(beta [h - lam * max(0, log pi_ref(y+) - log pi(y+))]),   h = r+ - r-

with summed log-probs. While log pi(y+) >= log pi_ref(y+) it is DPO; below, y+'s gradient grows
by a factor (1 + lam). lam = 50 and beta = 0.1 by default (lam as the value used for the Smaug
models in the paper, as recalled, not re-checked against its text here; set both in the spec).
Logs TRL's rewards/* and logps/*, and dpop/penalty (the max term, mean over pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import log_ratios, reward_metrics


def dpop_loss(logps: SequenceLogps, beta: float, lam: float) -> LossOutput:
    chosen_ratio, rejected_ratio = log_ratios(logps, "dpop")
    penalty = torch.relu(-chosen_ratio)  # max(0, log pi_ref(y+) - log pi(y+))
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio - lam * penalty))
    metrics = reward_metrics(beta, chosen_ratio, rejected_ratio, logps)
    metrics.update(detached_metrics(**{"dpop/penalty": penalty}))
    return LossOutput(losses.mean(), metrics)


DPOP = LossDefinition(
    name="dpop",
    compute=dpop_loss,
    description="DPO-Positive: -log sigma(beta (h - lam max(0, log pi_ref(y+) - log pi(y+)))).",
    defaults={"beta": 0.1, "lam": 50.0},
    constraints={"beta": "> 0", "lam": ">= 0"},
    needs_rejected=True,
    needs_reference=True,
)

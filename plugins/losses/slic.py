"""SLiC-HF (Zhao et al. 2023): a hinge on the policy's own log-prob gap plus an SFT regulariser.

    L = max(0, delta - log pi(y+|x) + log pi(y-|x)) - lam log pi(y_ref|x),   y_ref = y+

No reference model enters the hinge (docs/math.md §4); y_ref is the SFT target, here y+. TRL's
``loss_type="hinge"`` (the ``hinge`` loss here) is relu(1 - beta h), h reference-corrected: with no
reference (TRL's reference_free) and delta = 1/beta it equals beta times this hinge, and it has
no SFT term (lam = 0). Residual (over B for the batch mean): (1 + lam)(pi - e_{y+}) on y+ and
-(pi - e_{y-}) on y- while the hinge is active; lam (pi - e_{y+}) on y+ and nothing on y- once
the gap exceeds delta.
delta = 1 is SLiC-HF's margin; lam = 0.1 is this project's default (set it in the spec).
"""

from __future__ import annotations

import torch

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import in_range, require


def slic_loss(logps: SequenceLogps, delta: float, lam: float) -> LossOutput:
    delta = in_range("slic", "delta", delta, 0.0, float("inf"))
    lam = in_range("slic", "lam", lam, 0.0, float("inf"))
    require(logps, "slic", "rejected")
    hinge = torch.relu(delta - logps.chosen + logps.rejected)
    sft = -logps.chosen
    metrics = detached_metrics(**{
        "logps/chosen": logps.chosen,
        "logps/rejected": logps.rejected,
        "slic/hinge": hinge,
        "slic/sft": sft,
        "slic/active": (hinge > 0).float(),
    })
    return LossOutput((hinge + lam * sft).mean(), metrics)


SLIC = LossDefinition(
    name="slic",
    compute=slic_loss,
    description="SLiC-HF: max(0, delta - log pi(y+) + log pi(y-)) - lam log pi(y+); no reference.",
    defaults={"delta": 1.0, "lam": 0.1},
    constraints={"delta": ">= 0", "lam": ">= 0"},
    needs_rejected=True,
)

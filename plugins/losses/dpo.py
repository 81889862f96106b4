"""DPO (Rafailov et al. 2023) in its conservative form (Mitchell's cDPO), as the authors run it.

    L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),   h = r+ - r-

with r± the policy-minus-reference summed log-probs. eps = ``label_smoothing`` = 0 is plain DPO
(the authors' runs) and equals TRL's ``loss_type="sigmoid"``. With eps > 0 it is cDPO, which TRL
1.16 no longer has: its ``sigmoid`` ignores label_smoothing and its ``robust`` is a different,
unbiased formula (Chowdhury et al. 2024; the ``robust`` loss here). The batch loss is the mean
over pairs. Residual (eps = 0, docs/math.md §4): G = beta (1 - a)(pi - e_{y+}) on y+ and
-beta (1 - a)(pi - e_{y-}) on y-, a = sigma(beta h), each divided by B for the batch mean.
"""

from __future__ import annotations

import torch.nn.functional as F

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps

from .common import in_range, log_ratios, positive, reward_metrics


def dpo_loss(logps: SequenceLogps, beta: float, label_smoothing: float, *, loss: str = "dpo") -> LossOutput:
    beta = positive(loss, "beta", beta)
    eps = in_range(loss, "label_smoothing", label_smoothing, 0.0, 0.5)
    chosen_ratio, rejected_ratio = log_ratios(logps, loss)
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return LossOutput(losses.mean(), reward_metrics(beta, chosen_ratio, rejected_ratio, logps))


DPO = LossDefinition(
    name="dpo",
    compute=dpo_loss,
    description="DPO, conservative form: -(1-eps) log sigma(beta h) - eps log sigma(-beta h).",
    defaults={"beta": 0.1, "label_smoothing": 0.0},
    constraints={"beta": "> 0", "label_smoothing": "[0, 0.5]"},
    needs_rejected=True,
    needs_reference=True,
)

"""IPO (Azar et al. 2024): a squared loss that pulls the log-ratio margin h to 1/(2 beta).

    L = (h - 1/(2 beta))^2,   h = r+ - r-

By default r± are SUMS over response tokens, as in the IPO paper and the authors' code.
``per_token_mean: true`` divides every log-prob (policy and reference) by its response's token
count first: the loss and its gradients are then TRL's ``loss_type="ipo"``, but ``rewards/*`` are
logged as beta times these per-token log-ratios, where TRL logs beta times the summed ones
(``trl_dpo`` with ``loss_type: ipo`` logs TRL's way). Residual (docs/math.md §4, sign made explicit):
dL/dh = 2 (h - 1/(2 beta)) and d h / dz = e_{y+} - pi on y+, so G = 2 (1/(2 beta) - h)(pi - e_{y+})
on y+ and -2 (1/(2 beta) - h)(pi - e_{y-}) on y-, over B for the batch mean: while the margin is
below target the coefficient is positive and IPO acts like DPO; above it, IPO pushes back.
"""

from __future__ import annotations

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps

from .common import log_ratios, positive, require, reward_metrics, switch


def ipo_loss(logps: SequenceLogps, beta: float, per_token_mean: bool) -> LossOutput:
    beta = positive("ipo", "beta", beta)
    chosen_ratio, rejected_ratio = log_ratios(logps, "ipo")
    if switch("ipo", "per_token_mean", per_token_mean):
        require(logps, "ipo", "rejected_tokens")
        chosen_ratio = chosen_ratio / logps.chosen_tokens.clamp(min=1)
        rejected_ratio = rejected_ratio / logps.rejected_tokens.clamp(min=1)
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return LossOutput(losses.mean(), reward_metrics(beta, chosen_ratio, rejected_ratio, logps))


IPO = LossDefinition(
    name="ipo",
    compute=ipo_loss,
    description="IPO: (h - 1/(2 beta))^2 on summed log-ratios; per_token_mean: true for TRL's loss.",
    defaults={"beta": 0.1, "per_token_mean": False},
    constraints={"beta": "> 0"},
    needs_rejected=True,
    needs_reference=True,
)

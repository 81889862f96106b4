"""Reference-free preference losses of TRL's CPOTrainer: SimPO and CPO, each with AlphaPO's reward.

Both score a response by the policy alone, s = log pi(y|x): SimPO by its per-token average (the
length-normalised reward), CPO by its sum. AlphaPO (``alpha`` != 0) replaces s by
(1 - p^-alpha)/alpha with p = exp(s); alpha -> 0 gives s back. Then, with eps = label_smoothing,

    SimPO:  -(1-eps) log sigma(beta (s+ - s-) - gamma) - eps log sigma(-(beta (s+ - s-) - gamma))
    CPO:    -(1-eps) log sigma(beta (s+ - s-)) - eps log sigma(-beta (s+ - s-)) + cpo_alpha * NLL(y+)

NLL is -log pi(y+) averaged over all y+ tokens of the batch. Formulas as in TRL 1.16.0's
``trl/experimental/cpo/cpo_trainer.py`` (``cpo_loss``; ``loss_type="simpo"`` is SimPO with
``cpo_alpha=0``, which TRL's docs prescribe); TRL's NLL also covers prompt tokens where the
prompt is not masked, this one covers the response only. Metrics, as TRL names them:
rewards/* = beta s (so averaged for SimPO), logps/* = s, nll_loss (CPO).

Defaults: SimPO beta = 2.0, gamma = 1.0 (gamma/beta = 0.5, the SimPO authors' Mistral-7B-base
recipe); CPO beta = 0.1, cpo_alpha = 1.0 (TRL's CPOConfig, the CPO paper's unit BC weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import per_token, require, token_mean_nll


def alphapo_reward(score: Tensor, alpha: float) -> Tensor:
    """AlphaPO's (1 - p^-alpha)/alpha with p = exp(score); the score itself at alpha = 0."""
    if alpha == 0:
        return score
    return (1 - torch.exp(-alpha * score)) / alpha


def _smoothed(x: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)


def _metrics(beta: float, chosen: Tensor, rejected: Tensor, scores: tuple[Tensor, Tensor], **extra) -> dict:
    chosen_reward, rejected_reward = beta * chosen, beta * rejected
    return detached_metrics(**{
        "rewards/chosen": chosen_reward, "rewards/rejected": rejected_reward,
        "rewards/margins": chosen_reward - rejected_reward,
        "rewards/accuracies": (chosen_reward > rejected_reward).float(),
        "logps/chosen": scores[0], "logps/rejected": scores[1], **extra})


def simpo_loss(logps: SequenceLogps, beta: float, gamma: float, label_smoothing: float, alpha: float) -> LossOutput:
    require(logps, "simpo", "rejected")
    chosen_avg, rejected_avg = per_token(logps, "simpo", "chosen", "rejected")
    chosen, rejected = alphapo_reward(chosen_avg, alpha), alphapo_reward(rejected_avg, alpha)
    losses = _smoothed(beta * (chosen - rejected) - gamma, label_smoothing)
    return LossOutput(losses.mean(), _metrics(beta, chosen, rejected, (chosen_avg, rejected_avg)))


def cpo_loss(logps: SequenceLogps, beta: float, cpo_alpha: float, label_smoothing: float, alpha: float) -> LossOutput:
    require(logps, "cpo", "rejected")
    chosen, rejected = alphapo_reward(logps.chosen, alpha), alphapo_reward(logps.rejected, alpha)
    nll = token_mean_nll(logps)
    loss = _smoothed(beta * (chosen - rejected), label_smoothing).mean() + cpo_alpha * nll
    return LossOutput(loss, _metrics(beta, chosen, rejected, (logps.chosen, logps.rejected), nll_loss=nll))


SIMPO = LossDefinition(
    name="simpo",
    compute=simpo_loss,
    description="SimPO (Meng et al. 2024): -log sigma(beta (avg log pi(y+) - avg log pi(y-)) - gamma); no reference.",
    defaults={"beta": 2.0, "gamma": 1.0, "label_smoothing": 0.0, "alpha": 0.0},
    constraints={"beta": "> 0", "gamma": ">= 0", "label_smoothing": "[0, 0.5]", "alpha": "[-10, 10]"},
    needs_rejected=True,
)

CPO = LossDefinition(
    name="cpo",
    compute=cpo_loss,
    description="CPO (Xu et al. 2024): -log sigma(beta (log pi(y+) - log pi(y-))) + cpo_alpha NLL(y+); no reference.",
    defaults={"beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0, "alpha": 0.0},
    constraints={"beta": "> 0", "cpo_alpha": ">= 0", "label_smoothing": "[0, 0.5]", "alpha": "[-10, 10]"},
    needs_rejected=True,
)

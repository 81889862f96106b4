"""ORPO (Hong et al. 2024): SFT on y+ plus an odds-ratio penalty, on the policy alone.

With a± = the per-token average log-prob of y± and odds(a) = e^a / (1 - e^a),

    L = NLL(y+) - beta * mean_i log sigma(log odds(a+) - log odds(a-))
    log odds(a+) - log odds(a-) = (a+ - a-) - (log(1 - e^{a+}) - log(1 - e^{a-}))

NLL is -log pi(y+) averaged over the batch's y+ tokens (the paper's L_SFT on the response; TRL
1.16.0's ``trl/experimental/orpo/orpo_trainer.py`` also counts prompt tokens there). beta is the
paper's lambda; 0.1 as in TRL's ORPOConfig. Metrics as TRL names them: rewards/* = beta a±,
logps/* = a±, nll_loss, log_odds_ratio (mean log sigma(...)), log_odds_chosen (mean log odds gap).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import per_token, require, token_mean_nll

_LOG_HALF = -math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0, without the cancellation of either form alone near 0 or far below."""
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(logps: SequenceLogps, beta: float) -> LossOutput:
    require(logps, "orpo", "rejected")
    chosen, rejected = per_token(logps, "orpo", "chosen", "rejected")
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    nll = token_mean_nll(logps)
    chosen_reward, rejected_reward = beta * chosen, beta * rejected
    metrics = detached_metrics(**{
        "rewards/chosen": chosen_reward, "rewards/rejected": rejected_reward,
        "rewards/margins": chosen_reward - rejected_reward,
        "rewards/accuracies": (chosen_reward > rejected_reward).float(),
        "logps/chosen": chosen, "logps/rejected": rejected,
        "nll_loss": nll, "log_odds_ratio": ratio, "log_odds_chosen": log_odds})
    return LossOutput(nll - beta * ratio.mean(), metrics)


ORPO = LossDefinition(
    name="orpo",
    compute=orpo_loss,
    description="ORPO: NLL(y+) - beta log sigma(log odds ratio of y+ over y-), per-token averaged; no reference.",
    defaults={"beta": 0.1},
    constraints={"beta": ">= 0"},
    needs_rejected=True,
)

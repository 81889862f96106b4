"""BCO (Jung et al. 2024, "Binary Classifier Optimization"): each completion is classified
desirable or not by its implicit reward, around a running mean of the rewards seen so far.

With r the summed policy-minus-reference log-ratio of a completion and delta the running mean of
beta r over every completion trained on so far (this batch included),

    L = mean over the batch's completions of  -log sigma(beta r - delta)     for a desirable one
                                         and  -log sigma(-(beta r - delta))  for an undesirable one

as in TRL 1.16.0's BCOTrainer (``trl/experimental/bco/bco_trainer.py``, ``bco_loss`` without its
optional underlying-distribution-matching classifier, which needs a prompt-embedding model: not
here). delta carries no gradient and is state across steps: TRL's ``RunningMoments`` updated with
the batch's rewards before the loss (count-weighted: every completion counts once). The state is
the loss's ``new_state`` (``RunningMean``): saved in checkpoints, so a resumed run equals an
uninterrupted one; it starts afresh with each stage, as a new TRL trainer does.

Paired data is split into its desirable y+ and undesirable y- (TRL's ``maybe_unpair_preference_
dataset``); unpaired data (prompt/completion/label) trains as it is. Default beta = 0.1 (TRL's
BCOConfig). Logs rewards/*, logps/* (as KTO, an empty side logs nothing) and delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps

from .kto import side_metrics, split_ratios


@dataclass
class RunningMean:
    """TRL's RunningMoments, the part BCO reads: the mean of every value seen, count-weighted.

    ``count`` starts at 1e-24 as TRL's does, so the first update sets the mean to that batch's."""

    mean: float = 0.0
    count: float = 1e-24

    def update(self, values: Tensor) -> float:
        n = values.numel()
        if n:
            batch_mean = float(values.detach().to(torch.float64).mean())
            total = self.count + n
            self.mean += (batch_mean - self.mean) * n / total
            self.count = total
        return self.mean

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


def bco_loss(logps: SequenceLogps, beta: float, state: RunningMean) -> LossOutput:
    chosen_ratio, rejected_ratio, chosen, rejected = split_ratios(logps, "bco")
    chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    delta = state.update(torch.cat([chosen_reward, rejected_reward]))
    losses = torch.cat([-F.logsigmoid(chosen_reward - delta), -F.logsigmoid(-(rejected_reward - delta))])
    metrics = side_metrics(beta, chosen_ratio, rejected_ratio, chosen, rejected)
    metrics["delta"] = delta
    return LossOutput(losses.mean(), metrics)


BCO = LossDefinition(
    name="bco",
    compute=bco_loss,
    description="BCO: -log sigma(beta r - delta) / -log sigma(delta - beta r), delta the running mean reward; "
                "paired or unpaired.",
    defaults={"beta": 0.1},
    constraints={"beta": "> 0"},
    needs_rejected=True,
    needs_reference=True,
    accepts_unpaired=True,
    new_state=RunningMean,
)

"""KTO (Ethayarajh et al. 2024): a desirable/undesirable loss around a batch KL reference point.

Each pair gives one desirable response (y+) and one undesirable one (y-); with r± the summed
policy-minus-reference log-ratios and z the reference point,

    L = mean over the 2B responses of  w_D (1 - sigma(beta (r+ - z)))  and  w_U (1 - sigma(beta (z - r-)))

as in TRL 1.16.0's ``trl/trainer/kto_trainer.py`` (``loss_type="kto"``). z estimates
KL(pi || pi_ref) and carries no gradient. TRL computes it on mismatched (prompt, completion)
pairs built by its collator; the engine here has no mismatched sequences, so ``kl: batch`` (the
default) takes the mean log-ratio of the batch's own 2B responses, clamped at 0 as TRL clamps,
and ``kl: zero`` sets z = 0 (TRL's ``apo_zero_unpaired`` has no KL either). The data stays
paired (each pair split in two); KTO on genuinely unpaired examples is not supported yet.
Defaults: beta = 0.1, w_D = w_U = 1 (TRL's KTOConfig; the paper keeps w_D n_D / (w_U n_U) in
[1, 4/3], which balanced pairs meet). Logs TRL's kl, rewards/*, logps/*.
"""

from __future__ import annotations

import torch

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import log_ratios


def kto_loss(logps: SequenceLogps, beta: float, desirable_weight: float, undesirable_weight: float,
             kl: str) -> LossOutput:
    chosen_ratio, rejected_ratio = log_ratios(logps, "kto")
    if kl == "batch":
        z = torch.cat([chosen_ratio, rejected_ratio]).detach().mean().clamp(min=0)
    else:
        z = torch.zeros((), dtype=chosen_ratio.dtype, device=chosen_ratio.device)
    desirable = 1 - torch.sigmoid(beta * (chosen_ratio - z))
    undesirable = 1 - torch.sigmoid(beta * (z - rejected_ratio))
    loss = torch.cat([desirable_weight * desirable, undesirable_weight * undesirable]).mean()
    chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    metrics = detached_metrics(**{"kl": z, "rewards/chosen": chosen_reward, "rewards/rejected": rejected_reward,
                                  "logps/chosen": logps.chosen, "logps/rejected": logps.rejected})
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return LossOutput(loss, metrics)


KTO = LossDefinition(
    name="kto",
    compute=kto_loss,
    description="KTO: w_D (1 - sigma(beta (r+ - z))) and w_U (1 - sigma(beta (z - r-))), z a batch KL estimate.",
    defaults={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0, "kl": "batch"},
    constraints={"beta": "> 0", "desirable_weight": ">= 0", "undesirable_weight": ">= 0", "kl": "{batch, zero}"},
    needs_rejected=True,
    needs_reference=True,
)

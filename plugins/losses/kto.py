"""KTO (Ethayarajh et al. 2024): a desirable/undesirable loss around a KL reference point z.

With r the summed policy-minus-reference log-ratio of a completion,

    L = mean over the batch's completions of  w_D (1 - sigma(beta (r - z)))  for a desirable one
                                         and  w_U (1 - sigma(beta (z - r)))  for an undesirable one

as in TRL 1.16.0's KTOTrainer (``trl/experimental/kto/kto_trainer.py``, ``loss_type="kto"``).
The data is either unpaired (TRL's prompt/completion/label rows: ``logps.desirable`` says which
completion is which) or paired (each pair split into its desirable y+ and undesirable y-).

z estimates KL(pi || pi_ref) and carries no gradient; ``kl`` chooses how:

- ``mismatched`` (the default): TRL's estimate. The engine pairs prompt i with the completion of
  i-1 in the batch (TRL's ``_get_kl_dataset`` shift, over the batch's completions, so over the 2B
  of a paired batch) and z is the mean log-ratio of those pairs, clamped at 0. It is the default
  because it is the paper's and TRL's estimate: a completion written for another prompt says
  how far the policy moved in general, while the batch's own completions are the ones being
  pushed up and down. It costs one forward pass without grad of the policy and of the reference.
- ``batch``: the mean log-ratio of the batch's own completions, clamped at 0 (no extra pass).
- ``zero``: z = 0 (TRL's ``apo_zero_unpaired`` has no KL either).

Defaults: beta = 0.1, w_D = w_U = 1 (TRL's KTOConfig; the paper keeps w_D n_D / (w_U n_U) in
[1, 4/3]). Logs TRL's kl, rewards/chosen, rewards/rejected, logps/* (means over the batch's
desirable, resp. undesirable, completions: a batch without one of them logs none of it) and
rewards/margins when both are there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import log_ratios, require


def split_ratios(logps: SequenceLogps, loss: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(desirable log-ratios, undesirable log-ratios, their policy log-probs) of a paired or an
    unpaired batch: a pair gives one of each; an unpaired row one, by ``logps.desirable``."""
    if logps.desirable is None:
        chosen_ratio, rejected_ratio = log_ratios(logps, loss)
        return chosen_ratio, rejected_ratio, logps.chosen, logps.rejected
    require(logps, loss, "ref_chosen")
    good = logps.desirable.to(torch.bool)
    ratio = logps.chosen - logps.ref_chosen
    return ratio[good], ratio[~good], logps.chosen[good], logps.chosen[~good]


def kl_estimate(logps: SequenceLogps, kl: str, chosen_ratio: Tensor, rejected_ratio: Tensor) -> Tensor:
    """z, detached and clamped at 0 as TRL clamps, by the ``kl`` rule of the module docstring."""
    if kl == "mismatched":
        require(logps, "kto", "mismatched", "ref_mismatched")
        return (logps.mismatched - logps.ref_mismatched).detach().mean().clamp(min=0)
    if kl == "batch":
        return torch.cat([chosen_ratio, rejected_ratio]).detach().mean().clamp(min=0)
    return torch.zeros((), dtype=chosen_ratio.dtype, device=chosen_ratio.device)


def side_metrics(beta: float, chosen_ratio: Tensor, rejected_ratio: Tensor, chosen: Tensor,
                 rejected: Tensor, **extra: Tensor) -> dict[str, float]:
    """TRL's rewards/* and logps/* for the sides the batch has (an empty side logs nothing)."""
    values = dict(extra)
    if chosen_ratio.numel():
        values.update({"rewards/chosen": beta * chosen_ratio, "logps/chosen": chosen})
    if rejected_ratio.numel():
        values.update({"rewards/rejected": beta * rejected_ratio, "logps/rejected": rejected})
    metrics = detached_metrics(**values)
    if chosen_ratio.numel() and rejected_ratio.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics


def kto_loss(logps: SequenceLogps, beta: float, desirable_weight: float, undesirable_weight: float,
             kl: str) -> LossOutput:
    chosen_ratio, rejected_ratio, chosen, rejected = split_ratios(logps, "kto")
    z = kl_estimate(logps, kl, chosen_ratio, rejected_ratio)
    desirable = 1 - torch.sigmoid(beta * (chosen_ratio - z))
    undesirable = 1 - torch.sigmoid(beta * (z - rejected_ratio))
    loss = torch.cat([desirable_weight * desirable, undesirable_weight * undesirable]).mean()
    return LossOutput(loss, side_metrics(beta, chosen_ratio, rejected_ratio, chosen, rejected, kl=z))


KTO = LossDefinition(
    name="kto",
    compute=kto_loss,
    description="KTO: w_D (1 - sigma(beta (r - z))) / w_U (1 - sigma(beta (z - r))), z a KL estimate; paired or unpaired.",
    defaults={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0, "kl": "mismatched"},
    constraints={"beta": "> 0", "desirable_weight": ">= 0", "undesirable_weight": ">= 0",
                 "kl": "{mismatched, batch, zero}"},
    needs_rejected=True,
    needs_reference=True,
    accepts_unpaired=True,
    needs_mismatched=lambda params: params["kl"] == "mismatched",
)

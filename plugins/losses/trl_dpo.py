"""TRL 1.16's DPO loss types, each under TRL's name, and ``trl_dpo`` to combine them with weights.

TRL's ``DPOTrainer`` computes every loss type from token-summed log-probs of the policy and the
reference, r± = log pi(y±) - log pi_ref(y±), h = r+ - r-, and completion lengths n± (read from
``trl/trainer/dpo_trainer.py``, ``_compute_loss``, version 1.16.0; only the default
``f_divergence_type="reverse_kl"`` is implemented). Each term below is a per-pair loss; the batch
loss is its mean, and ``trl_dpo`` sums ``weight * mean`` over ``loss_type`` as TRL's
``loss_weights`` does. Every loss logs what TRL logs: rewards/* = beta times the SUMMED log-ratios
(whatever the loss uses), logps/* = summed policy log-probs.

Where ldreg already had a variant: ``dpo`` with label_smoothing is cDPO (TRL's ``sigmoid`` ignores
label_smoothing; ``robust`` here is TRL's); ``ipo`` logs per-token rewards under
``per_token_mean`` (``trl_dpo`` with ``loss_type: ipo`` logs summed ones); ``slic`` is
reference-free with an SFT term, ``hinge`` here is TRL's reference-corrected one; ``sppo`` is half
of TRL's ``sppo_hard``, which ``trl_dpo`` has as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ldreg.errors import SpecError, closest
from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, detached_metrics

from .common import log_ratios, per_token, reward_metrics, token_mean_nll


@dataclass
class Batch:
    """What the TRL terms read: the log-probs and the log-ratios r± (summed over tokens)."""

    logps: SequenceLogps
    chosen_ratio: Tensor
    rejected_ratio: Tensor

    @property
    def margin(self) -> Tensor:
        return self.chosen_ratio - self.rejected_ratio

    def per_token_margin(self, loss: str) -> Tensor:
        """r+/n+ - r-/n-: TRL's ipo and sigmoid_norm divide each score by its completion length."""
        chosen, ref_chosen, rejected, ref_rejected = per_token(
            self.logps, loss, "chosen", "ref_chosen", "rejected", "ref_rejected")
        return (chosen - ref_chosen) - (rejected - ref_rejected)


def _smoothed(x: Tensor, eps: float) -> Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


def sigmoid(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return -F.logsigmoid(beta * b.margin)


def hinge(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return torch.relu(1 - beta * b.margin)


def ipo(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return (b.per_token_margin("ipo") - 1 / (2 * beta)) ** 2


def exo_pair(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """EXO-pref (Ji et al. 2024, Eq. 16): KL(q || [1-eps, eps]) with q = sigmoid(+-beta h)."""
    if not eps > 0:
        raise SpecError("loss type 'exo_pair' needs label_smoothing > 0 (it takes log(label_smoothing)); "
                        "the EXO paper suggests 1e-3")
    x = beta * b.margin
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps)))


def nca_pair(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    chosen, rejected = beta * b.chosen_ratio, beta * b.rejected_ratio
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def robust(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """Chowdhury et al. 2024: unbiased under a label-flip rate eps (< 0.5)."""
    x = beta * b.margin
    return (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)


def bco_pair(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return -F.logsigmoid(beta * b.chosen_ratio) - F.logsigmoid(-beta * b.rejected_ratio)


def sppo_hard(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return (b.chosen_ratio - 0.5 / beta) ** 2 + (b.rejected_ratio + 0.5 / beta) ** 2


def aot(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """AOT (Melnyk et al. 2024), paired: sort the policy's and the reference's gaps over the batch."""
    gap = torch.sort(b.logps.chosen - b.logps.rejected, dim=0).values
    ref_gap = torch.sort(b.logps.ref_chosen - b.logps.ref_rejected, dim=0).values
    return _smoothed(beta * (gap - ref_gap), eps)


def aot_unpaired(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    delta = torch.sort(b.chosen_ratio, dim=0).values - torch.sort(b.rejected_ratio, dim=0).values
    return _smoothed(beta * delta, eps)


def apo_zero(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): raise y+, lower y-."""
    return 1 - torch.sigmoid(beta * b.chosen_ratio) + torch.sigmoid(beta * b.rejected_ratio)


def apo_down(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """APO-down (Eq. 8): lower y+, and y- more."""
    return torch.sigmoid(beta * b.chosen_ratio) + 1 - torch.sigmoid(beta * b.margin)


def discopop(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """DiscoPOP (Chris Lu et al. 2024, Eq. 5): logistic and exponential losses blended by sigmoid(x/tau)."""
    x = beta * b.margin
    mix = torch.sigmoid(x / tau)
    return -F.logsigmoid(x) * (1 - mix) + torch.exp(-x) * mix


def sft(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    """TRL's sft term: -log pi(y+) averaged over all y+ tokens of the batch, one value per pair."""
    return token_mean_nll(b.logps).expand(b.logps.chosen.shape[0])


def sigmoid_norm(b: Batch, beta: float, eps: float, tau: float) -> Tensor:
    return -F.logsigmoid(beta * b.per_token_margin("sigmoid_norm"))


Term = Callable[[Batch, float, float, float], Tensor]
TERMS: dict[str, Term] = {f.__name__: f for f in (
    sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired,
    apo_zero, apo_down, discopop, sft, sigmoid_norm)}


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _weights(text: str, n: int) -> list[float]:
    return [float(w) for w in _names(text)] if text.strip() else [1.0] * n


def combined(logps: SequenceLogps, types: list[str], weights: list[float], beta: float,
             label_smoothing: float, discopop_tau: float, loss: str) -> LossOutput:
    """sum_k w_k mean_i l_k(i), TRL's loss with ``loss_weights``; one metric per term when several."""
    chosen_ratio, rejected_ratio = log_ratios(logps, loss)
    batch = Batch(logps, chosen_ratio, rejected_ratio)
    total, parts = 0.0, {}
    for name, weight in zip(types, weights, strict=True):
        term = TERMS[name](batch, beta, label_smoothing, discopop_tau).mean()
        parts[f"loss/{name}"] = term.detach()
        total = total + weight * term
    metrics = reward_metrics(beta, chosen_ratio, rejected_ratio, logps)
    if len(types) > 1:
        metrics.update(detached_metrics(**parts))
    return LossOutput(total, metrics)


def _type_list_problem(text: str) -> str | None:
    names = _names(text)
    unknown = [n for n in names if n not in TERMS]
    if not names:
        return f"must name at least one of {', '.join(TERMS)}"
    if unknown:
        return f"has no loss type {unknown[0]!r}{closest(unknown[0], TERMS)}; TRL 1.16's are {', '.join(TERMS)}"
    return None


def _weight_list_problem(text: str) -> str | None:
    try:
        weights = _weights(text, 0)
    except ValueError:
        return "must be comma-separated numbers such as '1.0, 0.5', or '' for all 1"
    if not all(math.isfinite(w) for w in weights):
        return "must be finite numbers"
    return None


def _weights_per_type(params) -> list[str]:
    """One weight per loss type (or none): checked with the spec, so ``--dry-run`` names it."""
    types, weights = _names(params["loss_type"]), _names(params["loss_weights"])
    if weights and len(weights) != len(types):
        return [f"loss_weights: has {len(weights)} weights for {len(types)} loss types ({params['loss_type']!r}); "
                f"give one weight per type, or '' for all 1 (got {params['loss_weights']!r})"]
    return []


def trl_dpo_loss(logps: SequenceLogps, loss_type: str, loss_weights: str, beta: float,
                 label_smoothing: float, discopop_tau: float) -> LossOutput:
    for name, value, check in (("loss_type", loss_type, _type_list_problem),
                               ("loss_weights", loss_weights, _weight_list_problem)):
        if problem := check(value):
            raise SpecError(f"loss 'trl_dpo': {name} {problem} (got {value!r})")
    types = _names(loss_type)
    weights = _weights(loss_weights, len(types))
    if len(weights) != len(types):
        raise SpecError(f"loss 'trl_dpo': loss_weights has {len(weights)} weights for {len(types)} loss types "
                        f"({loss_type!r}); give one weight per type, or '' for all 1")
    return combined(logps, types, weights, beta, label_smoothing, discopop_tau, "trl_dpo")


TRL_DPO = LossDefinition(
    name="trl_dpo",
    compute=trl_dpo_loss,
    description="TRL 1.16's DPOTrainer: loss_type (comma-separated) combined with loss_weights.",
    defaults={"loss_type": "sigmoid", "loss_weights": "", "beta": 0.1, "label_smoothing": 0.0,
              "discopop_tau": 0.05},
    constraints={"loss_type": _type_list_problem, "loss_weights": _weight_list_problem, "beta": "> 0",
                 "label_smoothing": "[0, 0.5)", "discopop_tau": "> 0"},
    check=_weights_per_type,
    needs_rejected=True,
    needs_reference=True,
)


def _single(name: str, description: str, smoothing: float | None = None, smoothing_rule: str = "[0, 0.5)",
            tau: bool = False) -> LossDefinition:
    """One TRL loss type as its own loss: beta, and label_smoothing / discopop_tau where it reads them."""
    defaults: dict[str, float] = {"beta": 0.1}
    constraints: dict[str, str] = {"beta": "> 0"}
    if smoothing is not None:
        defaults["label_smoothing"], constraints["label_smoothing"] = smoothing, smoothing_rule
    if tau:
        defaults["discopop_tau"], constraints["discopop_tau"] = 0.05, "> 0"

    def compute(logps: SequenceLogps, beta: float, label_smoothing: float = 0.0,
                discopop_tau: float = 0.05) -> LossOutput:
        return combined(logps, [name], [1.0], beta, label_smoothing, discopop_tau, name)

    return LossDefinition(name=name, compute=compute, description=description, defaults=defaults,
                          constraints=constraints, needs_rejected=True, needs_reference=True)


SINGLE = (
    _single("robust", "Robust DPO (Chowdhury et al. 2024), TRL's 'robust': unbiased under label flips.",
            smoothing=0.0),
    _single("bco_pair", "TRL's 'bco_pair': -log sigma(beta r+) - log sigma(-beta r-)."),
    _single("nca_pair", "NCA (Chen et al. 2024), TRL's 'nca_pair'."),
    _single("exo_pair", "EXO-pref (Ji et al. 2024), TRL's 'exo_pair'; label_smoothing 1e-3 as the paper suggests.",
            smoothing=1e-3, smoothing_rule="(0, 0.5)"),
    _single("apo_zero", "APO-zero (D'Oosterlinck et al. 2024), TRL's 'apo_zero': raise y+, lower y-."),
    _single("apo_down", "APO-down (D'Oosterlinck et al. 2024), TRL's 'apo_down': lower y+, y- more."),
    _single("discopop", "DiscoPOP (Lu et al. 2024), TRL's 'discopop': logistic/exponential blend.", tau=True),
    _single("sigmoid_norm", "TRL's 'sigmoid_norm': DPO on per-token-averaged log-ratios."),
    _single("aot", "AOT (Melnyk et al. 2024), TRL's 'aot': DPO on batch-sorted gaps.", smoothing=0.0),
    _single("aot_unpaired", "AOT unpaired, TRL's 'aot_unpaired': sorted r+ against sorted r-.", smoothing=0.0),
    _single("hinge", "TRL's 'hinge': relu(1 - beta h) on the reference-corrected margin."),
)

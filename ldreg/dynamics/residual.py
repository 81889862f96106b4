"""The residual term G = dL/dz of Proposition 1, for any registered loss, by autograd.

A loss plugin sees only summed log-probabilities, which the engine computes from the logits z;
so dL/dz exists for every loss without the plugin knowing anything about it. This module takes
logits the trainer already has (for the updating batch), re-derives the log-probs on a detached
copy, evaluates the loss, and differentiates with respect to the logits alone: no model, no
parameter gradients, and the trainer's own graph is never touched.

Scaling: autograd gives G of the *batch* loss, and the summaries are reported per example
(multiplied by B) unless ``per_example=False``. For most built-in losses (SFT, DPO, IPO, SLiC,
...) the batch loss is the mean of per-example terms l_i, example i's logits enter only l_i, and
so B dL/dz_i = dl_i/dz_i: example i's own residual. For ``extend_sft`` (a mean over 2B
sequences) that is (pi - e_y)/2. Not every loss is such a mean: CPO's and ORPO's NLL term is
averaged over all y+ tokens of the batch (example i's share scales with its token count over the
batch's), and AOT's sorts the batch's margins (example i's G is that of the sorted term its margin
landed in, so it depends on the other examples). For those, B dL/dz_i is example i's part of
the gradient the step applies, not the residual of a loss of example i alone.

The closed forms of docs/math.md §4 for SFT, DPO and IPO are here too, for tests and docs; they
return dL/dz of the batch-mean loss, aligned with the (unshifted) logits, zero off the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from ldreg.errors import SpecError
from ldreg.losses import LossDefinition, LossOutput, SequenceLogps

from .logprobs import sequence_logps, shifted


@dataclass
class Residual:
    """Per-example ||G|| summaries of one batch (each a float64 tensor [B]) and the loss.

    ``token_norm``: mean over all response tokens (y+ and y-) of ||G_t||_2.
    ``norm``: the total, sqrt(sum over those tokens of ||G_t||^2) (Frobenius norm of G).
    ``chosen_*``/``rejected_*``: the same on y+ tokens / y- tokens only (``None`` without y-).
    ``chosen_fraction``: chosen_norm^2 / norm^2, the share of G's energy on y+ (NaN where G = 0).
    ``scale``: the factor applied to dL/dz (B when per example, else 1).
    """

    output: LossOutput
    token_norm: Tensor
    norm: Tensor
    chosen_token_norm: Tensor
    chosen_norm: Tensor
    chosen_fraction: Tensor
    rejected_token_norm: Tensor | None = None
    rejected_norm: Tensor | None = None
    scale: float = 1.0

    def values(self, prefix: str = "G/") -> dict[str, list[float]]:
        """The per-example arrays as an ``Observation.values`` mapping (kind "batch")."""
        names = ("token_norm", "norm", "chosen_token_norm", "chosen_norm", "chosen_fraction",
                 "rejected_token_norm", "rejected_norm")
        return {prefix + n: getattr(self, n).tolist() for n in names if getattr(self, n) is not None}


def _token_norms(grad: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """||G_t||_2 at each response position (zeros elsewhere) and the response-token counts."""
    grad, _, mask = shifted(grad, labels)
    grad = grad if grad.dtype == torch.float64 else grad.float()  # fp32 at least, no fp64 copy
    return grad.norm(dim=-1).double() * mask, mask.sum(-1)


def summarize_residual(chosen_grad: Tensor, chosen_labels: Tensor,
                       rejected_grad: Tensor | None = None, rejected_labels: Tensor | None = None,
                       *, output: LossOutput, scale: float = 1.0) -> Residual:
    """Per-example summaries from dL/dz tensors [B, T, V].

    A trainer that already has the logits' gradient (``logits.retain_grad()`` before its own
    backward) can call this directly and skip the second, logits-only backward.
    """
    chosen_t, chosen_n = _token_norms(chosen_grad, chosen_labels)
    chosen_t = chosen_t * scale
    chosen_sq = (chosen_t ** 2).sum(-1)
    chosen_mean = chosen_t.sum(-1) / chosen_n.clamp(min=1)
    if rejected_grad is None:
        return Residual(output, chosen_mean, chosen_sq.sqrt(), chosen_mean, chosen_sq.sqrt(),
                        torch.where(chosen_sq > 0, 1.0, float("nan")).to(chosen_sq), scale=scale)
    rejected_t, rejected_n = _token_norms(rejected_grad, rejected_labels)
    rejected_t = rejected_t * scale
    rejected_sq = (rejected_t ** 2).sum(-1)
    total_sq = chosen_sq + rejected_sq
    return Residual(
        output=output,
        token_norm=(chosen_t.sum(-1) + rejected_t.sum(-1)) / (chosen_n + rejected_n).clamp(min=1),
        norm=total_sq.sqrt(),
        chosen_token_norm=chosen_mean,
        chosen_norm=chosen_sq.sqrt(),
        chosen_fraction=torch.where(total_sq > 0, chosen_sq / total_sq, float("nan")),
        rejected_token_norm=rejected_t.sum(-1) / rejected_n.clamp(min=1),
        rejected_norm=rejected_sq.sqrt(),
        scale=scale,
    )


def residual_grads(loss: LossDefinition, hparams: Mapping[str, float],
                   chosen_logits: Tensor, chosen_labels: Tensor,
                   rejected_logits: Tensor | None = None, rejected_labels: Tensor | None = None,
                   *, ref_chosen: Tensor | None = None, ref_rejected: Tensor | None = None,
                   chosen_prob: Tensor | None = None) -> tuple[LossOutput, Tensor, Tensor | None]:
    """(loss output, dL/dz on the chosen logits, dL/dz on the rejected logits or None).

    The logits are detached first, so the caller's graph (and any parameter .grad) is untouched.
    ``ref_*`` are the reference (for SPIN: opponent) model's summed log-probs, shape [B].
    """
    if loss.needs_rejected and rejected_logits is None:
        raise SpecError(f"loss {loss.name!r} needs the rejected responses' logits and labels "
                        f"(rejected_logits=, rejected_labels=)")
    if (rejected_logits is None) != (rejected_labels is None):
        raise SpecError("pass rejected_logits and rejected_labels together, or neither")
    with torch.enable_grad():
        z_chosen = chosen_logits.detach().requires_grad_(True)
        inputs = [z_chosen]
        chosen, chosen_tokens = sequence_logps(z_chosen, chosen_labels)
        rejected = rejected_tokens = None
        if rejected_logits is not None:
            z_rejected = rejected_logits.detach().requires_grad_(True)
            inputs.append(z_rejected)
            rejected, rejected_tokens = sequence_logps(z_rejected, rejected_labels)
        logps = SequenceLogps(chosen, chosen_tokens, rejected, rejected_tokens,
                              ref_chosen, ref_rejected, chosen_prob)
        output = loss(logps, **hparams)
        grads = torch.autograd.grad(output.loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(z) if g is None else g for z, g in zip(inputs, grads)]
    detached = LossOutput(output.loss.detach(), output.metrics)
    return detached, grads[0], grads[1] if len(grads) > 1 else None


def residual_from_logits(loss: LossDefinition, hparams: Mapping[str, float],
                         chosen_logits: Tensor, chosen_labels: Tensor,
                         rejected_logits: Tensor | None = None, rejected_labels: Tensor | None = None,
                         *, ref_chosen: Tensor | None = None, ref_rejected: Tensor | None = None,
                         chosen_prob: Tensor | None = None, per_example: bool = True) -> Residual:
    """||G|| summaries of the updating batch for any registered loss (see the module docstring)."""
    output, g_chosen, g_rejected = residual_grads(
        loss, hparams, chosen_logits, chosen_labels, rejected_logits, rejected_labels,
        ref_chosen=ref_chosen, ref_rejected=ref_rejected, chosen_prob=chosen_prob)
    scale = float(chosen_logits.shape[0]) if per_example else 1.0
    return summarize_residual(g_chosen, chosen_labels, g_rejected, rejected_labels,
                              output=output, scale=scale)


# ---- closed forms (docs/math.md §4), dL/dz of the batch-mean loss -------------------------------


def sft_direction(logits: Tensor, labels: Tensor) -> Tensor:
    """pi - e_y at every response position, zero elsewhere, aligned with ``logits`` [B, T, V].

    This is d(-log pi(y|x))/dz: the SFT residual of one example, and the direction every
    log-prob-based loss scales.
    """
    z, targets, mask = shifted(logits.detach(), labels)
    direction = torch.softmax(z, dim=-1)
    direction = direction - torch.nn.functional.one_hot(targets, z.shape[-1]).to(direction.dtype)
    out = torch.zeros_like(logits, dtype=direction.dtype)
    out[:, :-1] = direction * mask.unsqueeze(-1)
    return out


def _per_example(coefficient: Tensor, direction: Tensor) -> Tensor:
    return coefficient.view(-1, 1, 1).to(direction.dtype) * direction


def sft_residual(logits: Tensor, labels: Tensor) -> Tensor:
    """L = -mean_i log pi(y_i|x_i):  G = (pi - e_y) / B on the response tokens."""
    return sft_direction(logits, labels) / logits.shape[0]


def _margin(chosen_logits, chosen_labels, rejected_logits, rejected_labels, ref_chosen, ref_rejected,
            per_token_mean=False):
    chosen, n_chosen = sequence_logps(chosen_logits.detach(), chosen_labels)
    rejected, n_rejected = sequence_logps(rejected_logits.detach(), rejected_labels)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if not per_token_mean:
        return chosen_ratio - rejected_ratio, torch.ones_like(chosen), torch.ones_like(chosen)
    n_chosen, n_rejected = n_chosen.clamp(min=1).to(chosen.dtype), n_rejected.clamp(min=1).to(chosen.dtype)
    return chosen_ratio / n_chosen - rejected_ratio / n_rejected, n_chosen, n_rejected


def dpo_residual(chosen_logits: Tensor, chosen_labels: Tensor, rejected_logits: Tensor,
                 rejected_labels: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                 beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """L = mean_i -(1-eps) log sigma(beta h_i) - eps log sigma(-beta h_i).

    dL/dh = -beta [(1-eps)(1-a) - eps a], a = sigma(beta h); dh/dz = -(pi - e) on y+ and
    +(pi - e) on y-. So G = c (pi - e_{y+}) / B on y+ and -c (pi - e_{y-}) / B on y-,
    c = beta [(1-eps)(1-a) - eps a], which is beta (1 - a) at eps = 0 (docs/math.md §4).
    """
    h, _, _ = _margin(chosen_logits, chosen_labels, rejected_logits, rejected_labels, ref_chosen, ref_rejected)
    a = torch.sigmoid(beta * h)
    c = beta * ((1 - label_smoothing) * (1 - a) - label_smoothing * a) / h.shape[0]
    return (_per_example(c, sft_direction(chosen_logits, chosen_labels)),
            _per_example(-c, sft_direction(rejected_logits, rejected_labels)))


def ipo_residual(chosen_logits: Tensor, chosen_labels: Tensor, rejected_logits: Tensor,
                 rejected_labels: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                 beta: float, per_token_mean: bool = False) -> tuple[Tensor, Tensor]:
    """L = mean_i (h_i - 1/(2 beta))^2.

    dL/dh = 2 (h - 1/(2 beta)), so G = c (pi - e_{y+}) / (B n+) on y+ and -c (pi - e_{y-}) / (B n-)
    on y-, c = 2 (1/(2 beta) - h), with n± the token counts under ``per_token_mean`` and 1 otherwise.
    (docs/math.md §4 derives this sign: the coefficient is positive while h is below 1/(2 beta).)
    """
    h, n_chosen, n_rejected = _margin(chosen_logits, chosen_labels, rejected_logits, rejected_labels,
                                      ref_chosen, ref_rejected, per_token_mean)
    c = 2 * (1 / (2 * beta) - h) / h.shape[0]
    return (_per_example(c / n_chosen, sft_direction(chosen_logits, chosen_labels)),
            _per_example(-c / n_rejected, sft_direction(rejected_logits, rejected_labels)))

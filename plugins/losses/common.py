"""What the preference losses share: input checks that name the missing piece, and TRL's metrics.

Losses are pure functions of ``SequenceLogps``; when the engine hands one a batch without a
field it needs (no reference log-probs, no y-, no soft labels) the loss says which field, which
loss, and how the engine or the spec provides it, instead of failing on ``None - Tensor``.
"""

from __future__ import annotations

from torch import Tensor

from ldreg.errors import SpecError
from ldreg.losses import SequenceLogps, detached_metrics

_HOW = {
    "rejected": "the engine fills it when LossDefinition.needs_rejected is True (pairs with y-)",
    "rejected_tokens": "the engine fills it with the rejected responses' token counts",
    "ref_chosen": "the engine fills it when LossDefinition.needs_reference is True (a reference model)",
    "ref_rejected": "the engine fills it when LossDefinition.needs_reference is True (a reference model)",
    "chosen_prob": "the data must carry a win probability P(y+ > y-) per pair",
    "chosen_tokens": "the engine fills it with the chosen responses' token counts",
    "mismatched": "the engine fills it in training when LossDefinition.needs_mismatched says so; elsewhere "
                  "(the residual and influence tools) use kl: batch or kl: zero",
    "ref_mismatched": "the engine fills it in training when LossDefinition.needs_mismatched says so",
}


def require(logps: SequenceLogps, loss: str, *fields: str) -> None:
    """Raise one clear SpecError if any of ``fields`` is missing from the batch."""
    missing = [f for f in fields if getattr(logps, f) is None]
    if missing:
        raise SpecError(
            f"loss {loss!r} needs SequenceLogps.{missing[0]}, which is missing: "
            f"{_HOW.get(missing[0], 'provide it')}"
        )


def positive(loss: str, name: str, value: float) -> float:
    if not value > 0:
        raise SpecError(f"loss {loss!r}: {name} must be > 0, got {value!r}")
    return float(value)


def in_range(loss: str, name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise SpecError(f"loss {loss!r}: {name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def switch(loss: str, name: str, value: bool | float) -> bool:
    """An on/off option: true or false (1 or 0, as specs wrote it before parameters had types)."""
    if not isinstance(value, bool) and value not in (0, 1):
        raise SpecError(f"loss {loss!r}: option {name} is true or false, got {value!r}")
    return bool(value)


def per_token(logps: SequenceLogps, loss: str, *fields: str) -> list[Tensor]:
    """The named summed log-probs (or log-ratios' parts) divided by their responses' token counts.

    ``chosen``/``ref_chosen`` divide by ``chosen_tokens``, the rejected ones by ``rejected_tokens``
    (each clamped at 1, as TRL clamps completion lengths)."""
    out = []
    for name in fields:
        counts = "rejected_tokens" if "rejected" in name else "chosen_tokens"
        require(logps, loss, name, counts)
        values = getattr(logps, name)
        out.append(values / getattr(logps, counts).clamp(min=1).to(values.dtype))
    return out


def token_mean_nll(logps: SequenceLogps) -> Tensor:
    """-log pi(y+) averaged over every y+ token of the batch (a token-weighted mean, as
    ``nn.CrossEntropyLoss`` over the flattened batch computes TRL's CPO/ORPO ``nll_loss``)."""
    return -logps.chosen.sum() / logps.chosen_tokens.sum().clamp(min=1).to(logps.chosen.dtype)


def reward_metrics(beta: float, chosen_ratio: Tensor, rejected_ratio: Tensor,
                   logps: SequenceLogps) -> dict[str, float]:
    """TRL's log: rewards/* = beta times the policy/reference log-ratios, logps/* = summed log-probs."""
    chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
    return detached_metrics(**{
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "logps/chosen": logps.chosen,
        "logps/rejected": logps.rejected,
    })


def log_ratios(logps: SequenceLogps, loss: str) -> tuple[Tensor, Tensor]:
    """(r+, r-) = policy minus reference summed log-probs of y+ and y- (docs/math.md §1, §4)."""
    require(logps, loss, "rejected", "ref_chosen", "ref_rejected")
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected

"""The loss contract: a loss is a pure function of per-sequence log-probabilities.

As in TRL's loss table, a loss plugin never sees a model. The engine hands it the summed
response log-probabilities of the policy (and of the frozen reference, when the loss needs one)
and the loss returns a scalar plus the quantities users expect logged, named as TRL names them
(rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen,
logps/rejected). Because the loss is a differentiable function of log-probabilities that the
engine computed from logits z, the engine derives the paper's residual term G = dL/dz by
autograd for any registered loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor


@dataclass
class SequenceLogps:
    """What a loss sees for one batch: sums over response tokens, each of shape [B].

    ``rejected`` is y- from the data, or y_gen for losses whose rejected response is generated
    (SPIN). ``ref_*`` are the frozen reference model's values. ``chosen_prob`` is a soft win
    probability P(y+ > y-) where the data carries one (SPPO).
    """

    chosen: Tensor
    chosen_tokens: Tensor
    rejected: Tensor | None = None
    rejected_tokens: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_prob: Tensor | None = None


@dataclass
class LossOutput:
    """A scalar to minimise and detached per-batch metrics (TRL's names) to log."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFunction = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossDefinition:
    """A registered loss.

    ``compute(logps, **hparams)`` returns a ``LossOutput``. ``defaults`` names every
    hyper-parameter the loss accepts with its default; a spec may override any of them and
    nothing else. ``needs_rejected``/``needs_reference`` tell the engine what to compute;
    ``rejected_source`` is ``"data"`` or ``"generated"`` (SPIN: the engine samples y- from the
    opponent model). ``sft_targets`` lists which responses an SFT-like loss trains on
    (``("chosen",)`` for SFT, ``("chosen", "rejected")`` for the paper's "extend").
    """

    name: str
    compute: LossFunction
    description: str
    defaults: Mapping[str, float] = field(default_factory=dict)
    needs_rejected: bool = False
    needs_reference: bool = False
    rejected_source: str = "data"
    needs_soft_labels: bool = False
    sft_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rejected_source not in ("data", "generated"):
            raise ValueError(f"rejected_source must be 'data' or 'generated', not {self.rejected_source!r}")

    def __call__(self, logps: SequenceLogps, **hparams: float) -> LossOutput:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"loss {self.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        return self.compute(logps, **{**self.defaults, **hparams})


def detached_metrics(**values: Tensor) -> dict[str, float]:
    """Turn batch tensors into the plain floats a logger stores (means over the batch)."""
    return {name: float(torch.as_tensor(v).detach().float().mean()) for name, v in values.items()}

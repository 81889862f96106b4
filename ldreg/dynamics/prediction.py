"""The first-order prediction of the one-step influence, beside the measured change (docs/math.md §10).

Proposition 1 says one SGD step of learning rate eta moves log pi(y_o|x_o) by
-eta A(x_o) K(x_o, x_u) G(x_u) + O(eta^2). For an SFT update on response type u the loss is
L = -(1/B) sum_j s_u(j) with s(chi) = log pi(y|x), so the step is theta += (eta/B) sum_j grad s_u(j)
and the first-order term contracts to the scalar eNTK of ``entk.py``:

    predicted_o(i) = (eta / B) sum_{j in the step's rows} <grad s_o(i), grad s_u(j)>
                   = (eta / B) sum_j K_{o,u}(i, j)

(per_example mode: B = 1 and j = i, so eta K_{o,u}(i, i)). The residual, measured minus predicted,
is the O(eta^2) part the decomposition leaves out: it shrinks four-fold when eta halves
(tests/test_prediction.py). The Gram is exact ("full") for small models; above ``max_params`` it
is the output layer's only ("last_layer", optionally projected), and then the prediction covers only
what the head contributes: each observation records the mode, so no reader mistakes one for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ldreg.dynamics.entk import (DEFAULT_MAX_PARAMS, count_parameters, parameter_names, per_example_grads,
                                 random_projection)
from ldreg.dynamics.influence import InfluenceResult, Update
from ldreg.dynamics.logprobs import EncodedPair, collate, sequence_logps
from ldreg.observations import Observation

PREDICTION_QUANTITIES = ("predicted", "measured", "residual")


@dataclass
class Prediction:
    """Per (update, observe) pair, the first-order predicted change per example; how K was taken."""

    values: dict[tuple[str, str], np.ndarray]
    lr: float
    mode: str
    entk_mode: str
    n_params: int


def _logp(forward, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sequence_logps(forward(input_ids=input_ids).logits, labels)[0].sum()


def _grads(model: torch.nn.Module, pairs: Sequence[EncodedPair], names: list[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = []
    for pair in pairs:
        batch = collate([pair], pad_id=0)
        inputs.append((batch.input_ids[0].to(device), batch.labels[0].to(device)))
    return per_example_grads(model, _logp, inputs, param_names=names, method="loop").double()


def first_order_prediction(model: torch.nn.Module, pairs_by_type: Mapping[str, Sequence[EncodedPair]], *,
                           updates: Sequence[Update | str], observes: Sequence[str], lr: float,
                           mode: str = "batch", entk_mode: str = "auto", max_params: int = DEFAULT_MAX_PARAMS,
                           projection_dim: int | None = None, seed: int = 0) -> Prediction:
    """eta-scaled eNTK contractions predicting what ``influence`` measures, for the same arguments.

    Only SFT updates (the runner's): a loss other than SFT gets a ValueError naming it. Gradients are
    taken in fp32 in eval mode (as the influence step is), their Gram in float64.
    """
    updates = [Update.sft(u) if isinstance(u, str) else u for u in updates]
    for u in updates:
        if u.loss.name != "sft" or u.rejected:
            raise ValueError(f"the first-order prediction covers SFT updates only; update {u.name!r} uses "
                             f"loss {u.loss.name!r}")
    if mode not in ("batch", "per_example"):
        raise ValueError(f"influence mode must be 'batch' or 'per_example', not {mode!r}")
    if entk_mode == "auto":
        entk_mode = "full" if count_parameters(model, parameter_names(model, "full")) <= max_params else "last_layer"
    names = parameter_names(model, entk_mode)

    def gradients(t: str) -> torch.Tensor:
        g = _grads(model, pairs_by_type[t], names)
        # the projection is seeded, so every type meets the same matrix: inner products keep their meaning
        return random_projection(g, projection_dim, seed) if projection_dim else g

    was_training = model.training
    model.eval()
    values = {}
    try:
        # held: the updating types' gradients; streamed: one observed type at a time (memory n x P each)
        updating = {t: gradients(t) for t in dict.fromkeys(u.chosen for u in updates)}
        for o in observes:
            g_o = updating[o] if o in updating else gradients(o)
            for u in updates:
                k = (g_o @ updating[u.chosen].T).cpu().numpy()  # K_{o,u}(i, j)
                values[(u.name, o)] = lr * (np.diag(k) if mode == "per_example" else k.mean(axis=1))
            del g_o
    finally:
        model.train(was_training)
    label = f"{entk_mode}+projection" if projection_dim else entk_mode
    return Prediction(values, lr, mode, label, count_parameters(model, names))


def prediction_observations(prediction: Prediction, measured: InfluenceResult, example_ids: Sequence[int], *,
                            step: int, examples_seen: int, stage: str, stage_index: int,
                            probe_set: str) -> list[Observation]:
    """One kind-"prediction" Observation per (update, observe) pair: predicted, measured, residual."""
    out = []
    for (u, o), predicted in prediction.values.items():
        delta = np.asarray(measured.values[(u, o)]["delta_logp"], dtype=float)
        out.append(Observation(
            kind="prediction", step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
            probe_set=probe_set, response_type=o, update_type=u, example_ids=[int(i) for i in example_ids],
            values={"predicted": [float(v) for v in predicted], "measured": [float(v) for v in delta],
                    "residual": [float(v) for v in delta - predicted]},
            meta={"lr": prediction.lr, "mode": prediction.mode, "entk_mode": prediction.entk_mode,
                  "n_params": prediction.n_params, "order": "first: -eta A K G"}))
    return out

"""The first-order prediction of one SGD step (eta K G from the exact eNTK) against the measured change:
the residual is the O(eta^2) remainder, so it shrinks four-fold when eta halves."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ldreg.dynamics.influence import Update, influence
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.dynamics.prediction import first_order_prediction, prediction_observations
from ldreg.losses import LossDefinition, LossOutput
from ldreg.models import load_model, load_tokenizer
from ldreg.query.charts.prediction import agreement, prediction_line

TYPES = ("chosen", "rejected")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, authors_records):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)

    def encode(text, limit):
        return tuple(tokenizer(text)["input_ids"][:limit])

    records = authors_records[20:24]
    pairs = {t: [EncodedPair(encode(r["prompt"], 24), encode(r[t], 12)) for r in records] for t in TYPES}
    return SimpleNamespace(model=model, pad=tokenizer.pad_token_id, pairs=pairs, ids=list(range(4)))


def _measured_and_predicted(tiny, lr, mode):
    kw = dict(updates=["chosen"], observes=list(TYPES), lr=lr, mode=mode)
    measured = influence(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, **kw)
    predicted = first_order_prediction(tiny.model, tiny.pairs, **kw)
    m = np.concatenate([measured.values[("chosen", o)]["delta_logp"] for o in TYPES])
    p = np.concatenate([predicted.values[("chosen", o)] for o in TYPES])
    return measured, predicted, m, p


@pytest.mark.parametrize("mode", ["per_example", "batch"])
def test_the_residual_is_second_order_in_the_learning_rate(tiny, mode):
    _, predicted, m1, p1 = _measured_and_predicted(tiny, 5e-5, mode)
    _, _, m2, p2 = _measured_and_predicted(tiny, 2.5e-5, mode)
    assert predicted.entk_mode == "full"  # the exact Gram: the tiny model is below max_params
    # the change itself is first order: halving eta halves it
    assert 1.9 < np.linalg.norm(m1) / np.linalg.norm(m2) < 2.1
    # what the first-order term leaves is second order: halving eta quarters it (measured 4.04 per
    # example, 3.97 batch; at larger eta third-order terms show: 2e-4 -> 1e-4 gave 5.9 per example)
    ratio = np.linalg.norm(m1 - p1) / np.linalg.norm(m2 - p2)
    assert 3.5 < ratio < 4.6, ratio
    # and small beside the change: the prediction explains nearly all of it
    assert agreement(p2, m2)["relative_residual"] < 0.02


def test_a_big_step_is_not_first_order(tiny):
    """The check can fail: far outside the small-step regime the prediction overshoots badly."""
    _, _, m, p = _measured_and_predicted(tiny, 4e-2, "per_example")
    assert agreement(p, m)["r2"] < 0


def test_observations_carry_predicted_measured_and_their_difference(tiny):
    measured, predicted, _, _ = _measured_and_predicted(tiny, 1e-4, "batch")
    obs = prediction_observations(predicted, measured, tiny.ids, step=0, examples_seen=0, stage="0-sft",
                                  stage_index=0, probe_set="train")
    assert [(o.update_type, o.response_type, o.kind) for o in obs] == [("chosen", t, "prediction") for t in TYPES]
    for o in obs:
        v = {q: np.array(x) for q, x in o.values.items()}
        np.testing.assert_allclose(v["measured"], measured.values[("chosen", o.response_type)]["delta_logp"])
        np.testing.assert_allclose(v["residual"], v["measured"] - v["predicted"])
        assert o.meta["entk_mode"] == "full" and o.meta["lr"] == 1e-4


def test_only_sft_updates_are_predicted(tiny):
    other = Update("dpo-like", "chosen", "rejected",
                   LossDefinition(name="margin", compute=lambda logps: LossOutput(-(logps.chosen - logps.rejected).mean()),
                                  description="a pairwise loss"))
    with pytest.raises(ValueError, match="update 'dpo-like' uses loss 'margin'"):
        first_order_prediction(tiny.model, tiny.pairs, updates=[other], observes=["chosen"], lr=1e-4)


def test_agreement_by_hand():
    a = agreement([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    # residual (0, 0, 1); measured mean 7/3, spread 42/9: R^2 = 1 - 1 / (42/9) = 1 - 9/42
    assert a["r2"] == pytest.approx(1 - 9 / 42) and a["relative_residual"] == pytest.approx(1 / 21 ** 0.5)
    assert agreement([0, 0], [1, -1])["r2"] == pytest.approx(0.0)


def test_report_line_says_when_nothing_was_measured():
    import pandas as pd

    from ldreg.query.charts.prediction import COLUMNS

    assert prediction_line(pd.DataFrame(columns=COLUMNS)).startswith("not measured")


def test_projected_and_last_layer_kernels_are_recorded_and_approximate(tiny):
    kw = dict(updates=["chosen"], observes=["chosen"], lr=1e-4, mode="per_example")
    exact = first_order_prediction(tiny.model, tiny.pairs, **kw).values[("chosen", "chosen")]
    projected = first_order_prediction(tiny.model, tiny.pairs, projection_dim=512, seed=3, **kw)
    head = first_order_prediction(tiny.model, tiny.pairs, entk_mode="last_layer", **kw)
    assert projected.entk_mode == "full+projection" and head.entk_mode == "last_layer"
    # Johnson-Lindenstrauss: ||g||^2 is kept in expectation, within a few percent at 512 dimensions
    np.testing.assert_allclose(projected.values[("chosen", "chosen")], exact, rtol=0.25)
    # the head's share of ||g||^2 is part of it, never more
    assert head.n_params < projected.n_params
    assert (head.values[("chosen", "chosen")] < exact).all() and (head.values[("chosen", "chosen")] > 0).all()

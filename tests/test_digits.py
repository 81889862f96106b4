"""The digits eNTK (Figure 1): training, the exact logit eNTK, the class matrix, one-step influence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldreg.errors import SpecError
from ldreg.paper.sim import digits as dg


@pytest.fixture(scope="module")
def result() -> dg.DigitsResult:
    return dg.run(seed=0)


@pytest.fixture(scope="module")
def trained():
    data = dg.load_digits_split(0)
    return data, dg.train(data, seed=0, epochs=2)


def test_cnn_learns_the_digits(result):
    assert result.test_accuracy > 0.85  # measured 0.92-0.94 over seeds 0-2


def test_entk_norms_match_explicit_jacobians(trained):
    data, model = trained
    x = data.x_train[:3]
    norms = dg.entk_norms(model, x)
    m = model.double()
    try:
        jac = [
            torch.cat([g.flatten(1) for g in torch.autograd.functional.jacobian(
                lambda *ps: torch.func.functional_call(m, dict(zip(dict(m.named_parameters()), ps)), (xi.double()[None],))[0],
                tuple(m.parameters()))], dim=1)
            for xi in x
        ]
    finally:
        model.float()
    for i in range(3):
        for j in range(3):
            expected = (jac[i] @ jac[j].T).norm()
            torch.testing.assert_close(norms[i, j], expected, rtol=1e-9, atol=1e-9)


def test_class_matrix_averages_distinct_pairs_only():
    labels = torch.tensor([0, 0, 1] + list(range(2, 10)) + list(range(1, 10)))
    norms = torch.full((len(labels), len(labels)), 2.0)
    norms.fill_diagonal_(100.0)  # self-pairs must not count
    norms[0, 1] = norms[1, 0] = 4.0
    m = dg.class_entk(norms, labels)
    assert m[0, 0] == 4.0 and m[1, 1] == 2.0 and m[0, 1] == 2.0


def test_class_entk_is_symmetric_with_a_strong_diagonal(result):
    m = result.class_entk
    np.testing.assert_allclose(m, m.T, rtol=1e-12)
    off = m[~np.eye(10, dtype=bool)]
    assert np.diag(m).mean() > 1.5 * off.mean()  # measured ratio 2.1-2.2 over seeds 0-2
    for c in range(10):  # measured: every class is most similar to itself
        assert m[c, c] > np.delete(m[c], c).max()


def test_similar_and_dissimilar_come_from_the_matrix(result):
    row = np.delete(result.class_entk[4], 4)
    others = [c for c in range(10) if c != 4]
    assert result.similar_class == others[int(np.argmax(row))]
    assert result.dissimilar_class == others[int(np.argmin(row))]


def test_one_step_pulls_up_the_same_class_more_than_a_dissimilar_one(result):
    mean = result.mean_influence("own_label")
    assert mean["same_class"] > 0
    assert mean["same_class"] > mean["dissimilar_class"]
    # on the same class both quantities are log p(u | x_o)
    np.testing.assert_array_equal(result.influence["same_class"]["own_label"], result.influence["same_class"]["update_class"])


def test_small_step_influence_is_the_gradient_inner_product(trained):
    """For a small lr, Delta log p(y_o|x_o) = -lr <grad log p(y_o|x_o), grad L(x_u)> + O(lr^2):
    the eNTK decomposition of Proposition 1 on a real network."""
    data, model = trained
    m = model.double()
    try:
        xo, yo, xu, yu = data.x_test[:4].double(), data.y_test[:4], data.x_train[0].double(), int(data.y_train[0])
        g_u = torch.autograd.grad(torch.nn.functional.cross_entropy(m(xu[None]), torch.tensor([yu])), list(m.parameters()))
        expected = []
        for i in range(4):
            lp = torch.log_softmax(m(xo[i : i + 1]), dim=1)[0, yo[i]]
            g_o = torch.autograd.grad(lp, list(m.parameters()))
            expected.append(-1e-5 * sum((a * b).sum() for a, b in zip(g_o, g_u)).item())
    finally:
        model.float()
    got = dg.one_step_influence(model, data.x_train[0], yu, data.x_test[:4], data.y_test[:4], lr=1e-5)["own_label"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-12)


def test_observations(result):
    obs = dg.digits_observations(result)
    entk, *influence = obs
    assert entk.kind == "digits" and entk.response_type == "entk_class"
    np.testing.assert_allclose(np.reshape(entk.values["gram"], (10, 10)), result.class_entk)
    assert [o.response_type for o in influence] == ["same_class", "similar_class", "dissimilar_class"]
    for o in influence:
        assert o.update_type == "digit_4"
        assert len(o.example_ids) == len(o.values["dlogp_own_label"]) == len(o.values["dlogp_update_class"])
    assert influence[1].meta["observed_class"] == result.similar_class


def test_bad_arguments_are_named():
    with pytest.raises(SpecError, match="update_class=12"):
        dg.run(update_class=12)
    with pytest.raises(SpecError, match="per_class=500"):
        dg.balanced_subset(torch.arange(10).repeat(3), per_class=500)


def test_digits_charts_render(result, tmp_path):
    from ldreg.paper.sim import charts

    frame = charts.entk_frame(result.class_entk)
    assert len(frame) == 100 and frame.loc[(frame["observed class"] == 3) & (frame["updated class"] == 5),
                                           "mean eNTK norm"].item() == result.class_entk[3, 5]
    heatmap = charts.entk_heatmap(result.class_entk)
    assert "||K(x_o, x_u)||_F" in str(heatmap.to_dict())
    heatmap.save(tmp_path / "entk.png")

    influence = charts.influence_frame(result)
    assert len(influence) == 6 and influence["observed"].iloc[0] == "same class (4)"
    charts.influence_chart(result).save(tmp_path / "influence.png")
    for name in ("entk.png", "influence.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"

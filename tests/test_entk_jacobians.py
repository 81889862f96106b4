"""The engine's eNTK over vector outputs (what the digits figure uses): exact on a linear model."""

import torch

from ldreg.dynamics.entk import block_gram, gram, per_example_grads, per_example_jacobians


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).double()


def test_logit_entk_of_a_linear_layer_is_the_input_kernel_times_identity():
    # logits W x + b: d logit_a / d W = e_a x^T, d logit_a / d b = e_a, so K_ij = (x_i . x_j + 1) I_3
    model, x = _linear(), torch.randn(5, 4, dtype=torch.float64)
    jac = per_example_jacobians(model, lambda forward, xi: forward(xi).squeeze(0), [(xi,) for xi in x])
    assert jac.shape == (5, 3, 4 * 3 + 3) and jac.dtype == torch.float64
    expected = (x @ x.T + 1)[:, :, None, None] * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(block_gram(jac), expected, atol=1e-12)


def test_one_output_is_the_scalar_gram():
    model, x = _linear(), torch.randn(6, 4, dtype=torch.float64)
    scalar = per_example_grads(model, lambda forward, xi: forward(xi)[0, 1], [(xi,) for xi in x])
    vector = per_example_jacobians(model, lambda forward, xi: forward(xi)[0, 1:2], [(xi,) for xi in x])
    assert torch.allclose(block_gram(vector)[:, :, 0, 0], gram(scalar).to(vector.dtype), atol=1e-6)

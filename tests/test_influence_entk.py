"""One-step influence and the exact eNTK on the tiny model, each checked against a hand computation
(and against each other: to first order, an SFT step moves log pi(y) by eta * K_ii)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldreg.dynamics.entk import (entk_observation, gram, output_layer, per_example_grads, random_projection,
                                 sequence_entk)
from ldreg.dynamics.influence import Update, influence, influence_observations
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.dynamics.probes import probe
from ldreg.losses import LossDefinition, LossOutput
from ldreg.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, authors_records):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    records = authors_records[20:26]

    def encode(text, limit):
        return tuple(tokenizer(text)["input_ids"][:limit])

    pairs = {t: [EncodedPair(encode(r["prompt"], 24), encode(r[t], 12)) for r in records]
             for t in ("chosen", "rejected", "random_permute")}
    return SimpleNamespace(model=model, pad=tokenizer.pad_token_id, pairs=pairs, ids=list(range(6)))


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sft_step_raises_its_own_response_and_restores_parameters_bit_exactly(tiny):
    before = _snapshot(tiny.model)
    marker = torch.ones_like(output_layer(tiny.model).weight)
    output_layer(tiny.model).weight.grad = marker
    tiny.model.train()
    result = influence(tiny.model, tiny.pairs, tiny.ids, updates=["chosen", "rejected"],
                       observes=["chosen", "rejected", "random_permute"], lr=1e-2, mode="per_example",
                       pad_id=tiny.pad)
    for name, p in tiny.model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert output_layer(tiny.model).weight.grad is marker and tiny.model.training
    output_layer(tiny.model).weight.grad = None
    tiny.model.eval()

    assert (result.values[("chosen", "chosen")]["delta_logp"] > 0).all()
    assert (result.values[("rejected", "rejected")]["delta_logp"] > 0).all()
    assert result.matrix().shape == (2, 3)
    cell = result.values[("chosen", "rejected")]
    np.testing.assert_allclose(cell["lbk"], np.abs(cell["delta_logp"]) / (cell["a_norm"] * cell["g_norm"]))
    np.testing.assert_array_equal(np.sign(cell["lbk_signed"]), np.sign(cell["delta_logp"]))


def test_sft_residual_norm_is_the_probes_g_norm(tiny):
    result = influence(tiny.model, tiny.pairs, tiny.ids, updates=["chosen"], observes=["chosen"], lr=1e-3,
                       pad_id=tiny.pad)
    probed = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad)
    np.testing.assert_allclose(result.values[("chosen", "chosen")]["g_norm"], probed["chosen"]["g_norm"], rtol=1e-5)
    np.testing.assert_allclose(result.values[("chosen", "chosen")]["a_norm"], probed["chosen"]["a_norm"])


def test_to_first_order_an_sft_step_moves_log_pi_by_eta_times_the_entk_diagonal(tiny):
    lr = 1e-4
    result = influence(tiny.model, tiny.pairs, tiny.ids, updates=["chosen"], observes=["chosen"], lr=lr,
                       mode="per_example", pad_id=tiny.pad)
    kernel = sequence_entk(tiny.model, tiny.pairs["chosen"])
    assert kernel.mode == "full"
    # L = -log pi(y|x), one example per step: Delta log pi = eta ||d log pi / d theta||^2 + O(eta^2)
    np.testing.assert_allclose(result.values[("chosen", "chosen")]["delta_logp"], lr * np.diag(kernel.gram), rtol=0.05)


def _dpo(logps, beta):
    h = (logps.chosen - logps.ref_chosen) - (logps.rejected - logps.ref_rejected)
    return LossOutput(-torch.nn.functional.logsigmoid(beta * h).mean())


def test_a_loss_update_gets_the_reference_from_before_the_step(tiny):
    dpo = LossDefinition(name="dpo_test", compute=_dpo, description="DPO", defaults={"beta": 0.1},
                         needs_rejected=True, needs_reference=True)
    update = Update("dpo", chosen="chosen", rejected="rejected", loss=dpo, hparams={"beta": 0.5})
    result = influence(tiny.model, tiny.pairs, tiny.ids, updates=[update], observes=["chosen", "rejected"],
                       lr=1e-2, pad_id=tiny.pad)
    probed = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad)
    # pi_ref = pi, so h = 0 and G = beta/2 (pi - e_y) on every token of y+ and y-
    n_c, n_r = probed["chosen"]["n_tokens"], probed["rejected"]["n_tokens"]
    expected = 0.25 * (probed["chosen"]["g_norm"] * n_c + probed["rejected"]["g_norm"] * n_r) / (n_c + n_r)
    np.testing.assert_allclose(result.values[("dpo", "chosen")]["g_norm"], expected, rtol=1e-5)
    assert result.values[("dpo", "chosen")]["delta_logp"].mean() > result.values[("dpo", "rejected")]["delta_logp"].mean()
    obs = influence_observations(result, tiny.ids, step=1, examples_seen=4, stage="dpo", stage_index=1,
                                 probe_set="train")
    assert [(o.kind, o.update_type, o.response_type) for o in obs] == [("influence", "dpo", "chosen"),
                                                                       ("influence", "dpo", "rejected")]
    assert obs[0].meta == {"lr": 1e-2, "mode": "batch", "loss": "dpo_test"}
    assert set(obs[0].values) == {"delta_logp", "lbk", "lbk_signed", "a_norm", "g_norm"}


def test_unknown_types_and_modes_are_refused(tiny):
    with pytest.raises(ValueError, match=r"\['y0'\] are used by the influence matrix"):
        influence(tiny.model, tiny.pairs, tiny.ids, updates=["y0"], observes=["chosen"], lr=1e-3)
    with pytest.raises(ValueError, match="'batch' or 'per_example'"):
        influence(tiny.model, tiny.pairs, tiny.ids, updates=["chosen"], observes=["chosen"], lr=1e-3, mode="all")


def _loop_grads(model, pairs, params):
    rows = []
    for pair in pairs:
        ids = torch.tensor([list(pair.prompt_ids) + list(pair.response_ids)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        start = len(pair.prompt_ids)
        s = sum(logp[start + j - 1, tok] for j, tok in enumerate(pair.response_ids))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(s, params)]))
    return torch.stack(rows).double()


def test_full_gram_is_symmetric_psd_and_equals_explicit_gradient_dot_products(tiny):
    pairs = tiny.pairs["chosen"] + tiny.pairs["random_permute"][:2]
    result = sequence_entk(tiny.model, pairs)
    k = result.gram
    assert result.mode == "full" and k.shape == (8, 8)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=1e-9 * np.abs(k).max())
    assert np.linalg.eigvalsh(k).min() > -1e-8 * np.abs(k).max()
    g = _loop_grads(tiny.model, pairs, list(tiny.model.parameters()))
    np.testing.assert_allclose(k, (g @ g.T).numpy(), rtol=1e-4, atol=1e-6 * np.abs(k).max())


def test_last_layer_gram_equals_the_manual_output_layer_gradient(tiny):
    pairs = tiny.pairs["rejected"]
    result = sequence_entk(tiny.model, pairs, max_params=1000)  # too small for full: falls back
    assert result.mode == "last_layer" and result.n_params == output_layer(tiny.model).weight.numel()
    head, captured = output_layer(tiny.model), []
    hook = head.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach()))
    rows = []
    with torch.no_grad():
        for pair in pairs:
            ids = torch.tensor([list(pair.prompt_ids) + list(pair.response_ids)])
            pi = torch.softmax(tiny.model(input_ids=ids).logits[0], -1)
            h = captured.pop()[0]
            start = len(pair.prompt_ids)
            grad_w = torch.zeros_like(head.weight)
            for j, tok in enumerate(pair.response_ids):  # d log pi(y_t)/dW = (e_y - pi_t) h_t^T
                residual = -pi[start + j - 1].clone()
                residual[tok] += 1
                grad_w += torch.outer(residual, h[start + j - 1])
            rows.append(grad_w.reshape(-1).double())
    hook.remove()
    g = torch.stack(rows)
    np.testing.assert_allclose(result.gram, (g @ g.T).numpy(), rtol=1e-4, atol=1e-6 * np.abs(result.gram).max())
    obs = entk_observation(result, tiny.ids, step=0, examples_seen=0, stage="sft", stage_index=0,
                           probe_set="train", response_type="rejected")
    assert obs.kind == "entk" and obs.meta["n"] == 6 and obs.meta["mode"] == "last_layer"
    assert obs.values["gram"] == pytest.approx(result.gram.reshape(-1).tolist())


def test_generic_per_example_grads_vmap_equals_loop_on_a_classifier():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10))
    x, y = torch.randn(7, 16), torch.randint(0, 10, (7,))

    def cross_entropy(forward, xi, yi):
        return torch.nn.functional.cross_entropy(forward(xi), yi)

    inputs = list(zip(x, y))
    fast = per_example_grads(net, cross_entropy, inputs, method="vmap")
    slow = per_example_grads(net, cross_entropy, inputs, method="loop")
    assert fast.shape == (7, sum(p.numel() for p in net.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    k = gram(fast)
    projected = gram(random_projection(fast, 4000, seed=3))
    assert torch.equal(projected, gram(random_projection(fast, 4000, seed=3)))
    torch.testing.assert_close(projected.diagonal(), k.diagonal(), rtol=0.1, atol=0)

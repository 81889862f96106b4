"""ldreg's own losses: hand-computed values, TRL 1.16's formulas where TRL has them, metrics, errors, registration.

The losses at TRL parity (TRL 1.16's DPO loss types, SimPO, CPO, ORPO, KTO, DPOP) are in test_loss_zoo.py.

One shared batch of two pairs (summed log-probs) is used for the hand computations:

    chosen       = [-10, -20]     ref_chosen   = [-11, -20]    ->  r+ = [ 1, 0]
    rejected     = [-12, -18]     ref_rejected = [-11, -19]    ->  r- = [-1, 1]
    h = r+ - r- = [2, -1]; chosen token counts [2, 4], rejected token counts [1, 2]
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ldreg.errors import SpecError
from ldreg.losses import SequenceLogps
from ldreg.registry import load_plugins
from ldreg_plugins.losses.dpo import DPO
from ldreg_plugins.losses.ipo import IPO
from ldreg_plugins.losses.sft import EXTEND, SFT
from ldreg_plugins.losses.slic import SLIC
from ldreg_plugins.losses.spin import SPIN
from ldreg_plugins.losses.sppo import SPPO

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def pairs(**overrides) -> SequenceLogps:
    fields = dict(chosen=T(-10, -20), chosen_tokens=torch.tensor([2, 4]), rejected=T(-12, -18),
                  rejected_tokens=torch.tensor([1, 2]), ref_chosen=T(-11, -20), ref_rejected=T(-11, -19))
    fields.update(overrides)
    return SequenceLogps(**fields)


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# ---- hand-computed values ---------------------------------------------------------------------


def test_sft_is_minus_mean_chosen_logp():
    out = SFT(pairs())
    # -(-10 + -20) / 2 = 15
    assert out.loss.item() == pytest.approx(15.0)
    assert out.metrics == pytest.approx({"logps/chosen": -15.0})


def test_extend_sft_averages_over_both_responses():
    out = EXTEND(pairs(rejected=T(-2, -6)))
    # -(-10 - 20 - 2 - 6) / 4 = 38 / 4 = 9.5
    assert out.loss.item() == pytest.approx(9.5)
    assert out.metrics == pytest.approx({"logps/chosen": -15.0, "logps/rejected": -4.0})


def test_dpo_hand_values_and_trl_metrics():
    out = DPO(pairs())  # beta 0.1
    # beta h = [0.2, -0.1]; -log sigma(0.2) = log(1 + e^-0.2) = 0.598138869,
    # -log sigma(-0.1) = log(1 + e^0.1) = 0.744396660; mean = 0.671267765
    assert out.loss.item() == pytest.approx(0.671267765, abs=1e-9)
    assert out.loss.item() == pytest.approx((softplus(-0.2) + softplus(0.1)) / 2, abs=1e-12)
    # rewards = beta r: chosen [0.1, 0] -> 0.05, rejected [-0.1, 0.1] -> 0; margins [0.2, -0.1] -> 0.05;
    # accuracies: 0.1 > -0.1 yes, 0 > 0.1 no -> 0.5; logps are the summed policy log-probs
    assert out.metrics == pytest.approx({
        "rewards/chosen": 0.05, "rewards/rejected": 0.0, "rewards/margins": 0.05,
        "rewards/accuracies": 0.5, "logps/chosen": -15.0, "logps/rejected": -15.0})


def test_dpo_label_smoothing_is_conservative_dpo():
    out = DPO(pairs(), label_smoothing=0.2)
    # (1-eps)(-log sigma(x)) + eps(-log sigma(-x)) = -log sigma(x) + eps x, x = beta h = [0.2, -0.1]:
    # [0.598138869 + 0.04, 0.744396660 - 0.02] = [0.638138869, 0.724396660]; mean = 0.681267765
    assert out.loss.item() == pytest.approx(0.681267765, abs=1e-9)


def test_ipo_sums_log_ratios_by_default():
    out = IPO(pairs())  # beta 0.1 -> target 1/(2 beta) = 5
    # (2 - 5)^2 = 9, (-1 - 5)^2 = 36; mean = 22.5
    assert out.loss.item() == pytest.approx(22.5)
    assert out.metrics["rewards/margins"] == pytest.approx(0.05)


def test_ipo_per_token_mean_divides_by_token_counts():
    out = IPO(pairs(), per_token_mean=True)
    # r+/n+ = [1/2, 0/4] = [0.5, 0]; r-/n- = [-1/1, 1/2] = [-1, 0.5]; h = [1.5, -0.5]
    # (1.5 - 5)^2 = 12.25, (-0.5 - 5)^2 = 30.25; mean = 21.25
    assert out.loss.item() == pytest.approx(21.25)
    # rewards use the averaged ratios the loss saw: chosen 0.1 * mean(0.5, 0) = 0.025
    assert out.metrics["rewards/chosen"] == pytest.approx(0.025)
    assert out.metrics["rewards/rejected"] == pytest.approx(0.1 * (-1 + 0.5) / 2)
    assert out.metrics["logps/chosen"] == pytest.approx(-15.0)  # logps stay summed


def test_slic_hinge_plus_sft_without_reference():
    out = SLIC(pairs(ref_chosen=None, ref_rejected=None))  # delta 1, lam 0.1
    # gap log pi(y+) - log pi(y-) = [-10 + 12, -20 + 18] = [2, -2]
    # hinge = [max(0, 1 - 2), max(0, 1 + 2)] = [0, 3]; sft = -log pi(y+) = [10, 20]
    # loss = [0 + 0.1 * 10, 3 + 0.1 * 20] = [1, 5]; mean = 3
    assert out.loss.item() == pytest.approx(3.0)
    assert out.metrics == pytest.approx({"logps/chosen": -15.0, "logps/rejected": -15.0,
                                         "slic/hinge": 1.5, "slic/sft": 15.0, "slic/active": 0.5})
    # the reference, if present, changes nothing
    assert SLIC(pairs()).loss.item() == pytest.approx(3.0)
    # lam = 0, delta = 3: hinge [max(0, 3 - 2), max(0, 3 + 2)] = [1, 5]; mean 3
    assert SLIC(pairs(), delta=3.0, lam=0.0).loss.item() == pytest.approx(3.0)


def test_sppo_hard_labels_authors_code_form():
    out = SPPO(pairs())  # beta 0.1 -> (P_w - 1/2)/beta = 5, (P_l - 1/2)/beta = -5
    # pair 1: 1/2 [(1 - 5)^2 + (-1 + 5)^2] = 1/2 (16 + 16) = 16
    # pair 2: 1/2 [(0 - 5)^2 + ( 1 + 5)^2] = 1/2 (25 + 36) = 30.5;  mean = 23.25
    assert out.loss.item() == pytest.approx(23.25)
    assert out.metrics["rewards/accuracies"] == pytest.approx(0.5)


def test_sppo_code_form_is_half_the_table_form():
    logps = pairs()
    r_plus, r_minus = logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected
    table = ((r_plus - 5) ** 2 + (r_minus + 5) ** 2).mean()  # the table form (docs/math.md §4): [32, 61] -> 46.5
    assert table.item() == pytest.approx(46.5)
    assert SPPO(logps).loss.item() == pytest.approx(table.item() / 2)


def test_sppo_soft_labels_from_the_data():
    out = SPPO(pairs(chosen_prob=T(0.75, 0.5)), soft=True)
    # pair 1: P_w = .75 -> targets (.75-.5)/.1 = 2.5 and (.25-.5)/.1 = -2.5:
    #         1/2 [(1 - 2.5)^2 + (-1 + 2.5)^2] = 1/2 (2.25 + 2.25) = 2.25
    # pair 2: P_w = .5 -> both targets 0: 1/2 [0^2 + 1^2] = 0.5;  mean = 1.375
    assert out.loss.item() == pytest.approx(1.375)
    # hard labels ignore the data's probabilities
    assert SPPO(pairs(chosen_prob=T(0.75, 0.5))).loss.item() == pytest.approx(23.25)
    # soft labels of exactly 1 reproduce the hard loss
    assert SPPO(pairs(chosen_prob=T(1.0, 1.0)), soft=True).loss.item() == pytest.approx(23.25)
    # a spec written before parameters had types (soft: 1.0) still means true
    assert SPPO(pairs(chosen_prob=T(0.75, 0.5)), soft=1.0).loss.item() == pytest.approx(1.375)


def test_spin_is_dpo_against_the_opponent():
    assert SPIN.rejected_source == "generated" and SPIN.needs_reference
    assert SPIN(pairs()).loss.item() == pytest.approx(0.671267765, abs=1e-9)
    # beta 1: x = h = [2, -1]: log(1 + e^-2) = 0.126928011, log(1 + e^1) = 1.313261687; mean 0.720094849
    out = SPIN(pairs(), beta=1.0)
    assert out.loss.item() == pytest.approx(0.720094849, abs=1e-9)
    assert out.metrics["rewards/chosen"] == pytest.approx(0.5)


# ---- TRL's documented formulas, written independently, on random log-probs ---------------------


@pytest.fixture
def random_pairs() -> SequenceLogps:
    g = torch.Generator().manual_seed(0)
    n = 64
    logp = lambda: -torch.rand(n, generator=g, dtype=torch.float64) * 100  # noqa: E731
    return SequenceLogps(chosen=logp(), chosen_tokens=torch.randint(1, 50, (n,), generator=g),
                         rejected=logp(), rejected_tokens=torch.randint(1, 50, (n,), generator=g),
                         ref_chosen=logp(), ref_rejected=logp())


def trl_logits(pc, pr, rc, rr):
    """TRL: logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)."""
    return (pc - pr) - (rc - rr)


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
def test_dpo_is_trl_sigmoid_at_eps_0_and_conservative_dpo_above(random_pairs, beta, eps):
    """TRL 1.16's sigmoid is -log sigma(beta h) and ignores label_smoothing; ldreg's dpo with eps > 0 is
    cDPO (Mitchell 2023), -(1-eps) log sigma(beta h) - eps log sigma(-beta h), which older TRL called
    sigmoid. TRL 1.16's robust is another formula (test_loss_zoo.py)."""
    p = random_pairs
    logits = trl_logits(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected)
    cdpo = (-F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps).mean()
    trl_sigmoid = (-F.logsigmoid(beta * logits)).mean()
    out = DPO(p, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(out.loss, cdpo, rtol=0, atol=1e-12)
    assert torch.isclose(out.loss, trl_sigmoid, rtol=0, atol=1e-12) == (eps == 0)
    chosen_rewards = beta * (p.chosen - p.ref_chosen)
    rejected_rewards = beta * (p.rejected - p.ref_rejected)
    # logged in float64: equal to the loss's own rewards to the last digit
    assert out.metrics["rewards/chosen"] == chosen_rewards.mean().item()
    assert out.metrics["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(),
                                                           rel=1e-15)
    assert out.metrics["rewards/accuracies"] == pytest.approx(
        (chosen_rewards > rejected_rewards).double().mean().item())


def test_ipo_per_token_mean_matches_trl_ipo(random_pairs):
    """TRL's ipo averages each sequence's log-probs over its completion tokens, then (logits - 1/(2b))^2."""
    p, beta = random_pairs, 0.3
    pc, pr = p.chosen / p.chosen_tokens, p.rejected / p.rejected_tokens
    rc, rr = p.ref_chosen / p.chosen_tokens, p.ref_rejected / p.rejected_tokens
    trl = ((trl_logits(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).mean()
    torch.testing.assert_close(IPO(p, beta=beta, per_token_mean=True).loss, trl, rtol=1e-12, atol=0)
    summed = ((trl_logits(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected) - 1 / (2 * beta)) ** 2).mean()
    torch.testing.assert_close(IPO(p, beta=beta).loss, summed, rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_slic_hinge_is_trl_hinge_over_beta(random_pairs, beta):
    """TRL hinge = relu(1 - beta h). Reference-free (h = policy gap) and delta = 1/beta:
    relu(1 - beta h) = beta relu(1/beta - h), so TRL = beta * SLiC(delta=1/beta, lam=0)."""
    p = random_pairs
    trl = torch.relu(1 - beta * (p.chosen - p.rejected)).mean()
    ours = SLIC(p, delta=1 / beta, lam=0.0).loss
    torch.testing.assert_close(beta * ours, trl, rtol=1e-12, atol=1e-12)
    # with a reference model TRL's hinge sees the reference-corrected margin; SLiC never does
    with_ref = torch.relu(1 - beta * trl_logits(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected)).mean()
    assert not torch.isclose(beta * ours, with_ref)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_sppo_hard_is_half_trl_sppo_hard(random_pairs, beta):
    p = random_pairs
    a, b = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    trl = ((a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2).mean()
    torch.testing.assert_close(2 * SPPO(p, beta=beta).loss, trl, rtol=1e-12, atol=0)


def test_losses_are_differentiable_in_the_policy_logps(random_pairs):
    p = random_pairs
    p.chosen.requires_grad_(True)
    p.rejected.requires_grad_(True)
    for loss in (DPO, IPO, SLIC, SPPO, SPIN, EXTEND):
        grads = torch.autograd.grad(loss(p).loss, [p.chosen, p.rejected], allow_unused=True)
        assert grads[0] is not None and torch.isfinite(grads[0]).all(), loss.name


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [DPO, IPO, SPPO, SPIN])
def test_reference_losses_name_the_missing_reference(loss):
    with pytest.raises(SpecError, match=rf"loss '{loss.name}' needs SequenceLogps.ref_chosen.*reference"):
        loss(pairs(ref_chosen=None, ref_rejected=None))


@pytest.mark.parametrize("loss", [DPO, IPO, SLIC, SPPO, SPIN, EXTEND])
def test_pair_losses_name_the_missing_rejected(loss):
    with pytest.raises(SpecError, match=rf"loss '{loss.name}' needs SequenceLogps.rejected\b"):
        loss(pairs(rejected=None, rejected_tokens=None))


def test_ipo_per_token_mean_needs_token_counts():
    with pytest.raises(SpecError, match="rejected_tokens"):
        IPO(pairs(rejected_tokens=None), per_token_mean=True)


def test_sppo_soft_labels_asked_for_and_missing():
    with pytest.raises(SpecError, match=r"soft: true needs a win probability.*set soft: false"):
        SPPO(pairs(), soft=True)
    with pytest.raises(SpecError, match=r"\[0, 1\]"):
        SPPO(pairs(chosen_prob=T(1.5, 0.2)), soft=True)


@pytest.mark.parametrize("loss,hparams,message", [
    (DPO, {"beta": 0.0}, "beta must be > 0"),
    (DPO, {"label_smoothing": 0.7}, r"label_smoothing must lie in \[0.0, 0.5\]"),
    (IPO, {"per_token_mean": 0.5}, "option per_token_mean is true or false, got 0.5"),
    (SPPO, {"soft": 2.0}, "option soft is true or false"),
    (SLIC, {"delta": -1.0}, "delta must lie in"),
    (SPIN, {"beta": -0.1}, "loss 'spin': beta must be > 0"),
])
def test_bad_hyper_parameters_are_named(loss, hparams, message):
    with pytest.raises(SpecError, match=message):
        loss(pairs(), **hparams)


def test_unknown_hyper_parameter_lists_the_accepted_ones():
    with pytest.raises(TypeError, match="accepts: beta, label_smoothing"):
        DPO(pairs(), gamma=1.0)


# ---- registration through the real plugin manager ---------------------------------------------


def test_all_losses_register_through_the_entry_point():
    losses = load_plugins().losses
    trl_names = ["aot", "aot_unpaired", "apo_down", "apo_zero", "bco_pair", "discopop", "exo_pair", "hinge",
                 "nca_pair", "robust", "sigmoid_norm"]
    assert losses.names() == sorted(["dpo", "extend_sft", "ipo", "sft", "slic", "spin", "sppo", "dpop", "simpo",
                                     "cpo", "orpo", "kto", "bco", "trl_dpo", *trl_names])
    assert all(r.plugin == "ldreg.losses" for r in losses.registrations())
    needs = {name: (losses.get(name).needs_rejected, losses.get(name).needs_reference)
             for name in losses.names()}
    assert needs == {"sft": (False, False), "extend_sft": (True, False), "dpo": (True, True),
                     "ipo": (True, True), "slic": (True, False), "sppo": (True, True),
                     "spin": (True, True), "dpop": (True, True), "simpo": (True, False), "cpo": (True, False),
                     "orpo": (True, False), "kto": (True, True), "bco": (True, True), "trl_dpo": (True, True),
                     **{name: (True, True) for name in trl_names}}
    assert losses.get("spin").rejected_source == "generated"
    assert {n: losses.get(n).defaults.get("beta") for n in ("dpo", "ipo", "sppo", "spin")} == \
        {"dpo": 0.1, "ipo": 0.1, "sppo": 0.1, "spin": 0.1}
    # switches are booleans now, with the same (off) defaults as when they were 0.0
    assert losses.get("ipo").defaults["per_token_mean"] is False and losses.get("sppo").defaults["soft"] is False

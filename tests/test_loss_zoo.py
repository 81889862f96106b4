"""The loss zoo: TRL 1.16's DPO loss types, SimPO, CPO, ORPO, KTO, BCO and DPOP, and typed hyper-parameters.

Four checks per loss: values computed by hand on one small batch; TRL 1.16.0's formulas, re-written
here from its source (trl/trainer/dpo_trainer.py ``_compute_loss``, trl/trainer/kto_trainer.py,
trl/experimental/cpo/cpo_trainer.py ``cpo_loss``, trl/experimental/bco/bco_trainer.py ``bco_loss`` and
trl/trainer/utils.py ``RunningMoments``, trl/experimental/orpo/orpo_trainer.py
``odds_ratio_loss``) on random log-probs; autograd gradients against closed forms; and the residual
G = dL/dz by autograd through every registered loss, equal to the chain rule dL/dlogp (e_y - pi).

The hand batch (summed log-probs) is test_losses.py's:

    chosen   = [-10, -20]   ref_chosen   = [-11, -20]  ->  r+ = [ 1, 0];  chosen tokens   [2, 4]
    rejected = [-12, -18]   ref_rejected = [-11, -19]  ->  r- = [-1, 1];  rejected tokens [1, 2]
    h = r+ - r- = [2, -1]
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ldreg.cli import main
from ldreg.dynamics.logprobs import IGNORE, sequence_logps
from ldreg.dynamics.residual import residual_grads, sft_direction
from ldreg.errors import SpecError
from ldreg.losses import LossDefinition, LossOutput, SequenceLogps, checked_call
from ldreg.registry import load_plugins
from test_losses import T, pairs  # the same hand-checked pairs as the original losses' tests

LOSSES = load_plugins().losses


def call(name: str, logps: SequenceLogps, **hparams) -> LossOutput:
    return LOSSES.get(name)(logps, **hparams)


def sp(x: float) -> float:
    """softplus: -log sigma(-x)."""
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- hand-computed values ----------------------------------------------------------------------


@pytest.mark.parametrize("name,hparams,expected", [
    # beta 1: [-log s(1) - log s(1), -log s(0) - log s(-1)] = [2 sp(-1), log 2 + sp(1)]
    ("bco_pair", {"beta": 1.0}, (2 * sp(-1) + math.log(2) + sp(1)) / 2),
    # [1 - s(1) + s(-1), 1 - s(0) + s(1)]
    ("apo_zero", {"beta": 1.0}, ((1 - sig(1) + sig(-1)) + (0.5 + sig(1))) / 2),
    # [s(r+) + 1 - s(h)] = [s(1) + 1 - s(2), s(0) + 1 - s(-1)]
    ("apo_down", {"beta": 1.0}, ((sig(1) + 1 - sig(2)) + (0.5 + 1 - sig(-1))) / 2),
    # [sp(-r+) + sp(r+)/2 + sp(r-)/2] = [sp(-1) + sp(1)/2 + sp(-1)/2, sp(0) + sp(0)/2 + sp(1)/2]
    ("nca_pair", {"beta": 1.0}, ((sp(-1) + sp(1) / 2 + sp(-1) / 2) + (1.5 * math.log(2) + sp(1) / 2)) / 2),
    # x = [2, -1], eps 1/4: [-(3/4) log s(x) + (1/4) log s(-x)] / (1/2) = [-0.873072, 1.813262]
    ("robust", {"beta": 1.0, "label_smoothing": 0.25}, 0.47009484928059764),
    # beta 0.5: relu(1 - 0.5 [2, -1]) = [0, 1.5]
    ("hinge", {"beta": 0.5}, 0.75),
    # per-token h = [1/2 - (-1/1), 0/4 - 1/2] = [1.5, -0.5]
    ("sigmoid_norm", {"beta": 1.0}, (sp(-1.5) + sp(0.5)) / 2),
    # x = [2, -1], eps 0.1: s(x)(log s(x) - log 0.9) + s(-x)(log s(-x) - log 0.1)
    ("exo_pair", {"beta": 1.0, "label_smoothing": 0.1}, 0.565699766867923),
    # x = [2, -1], tau 0.05: sp(-x)(1 - s(x/tau)) + e^-x s(x/tau)
    ("discopop", {"beta": 1.0}, sum(sp(-x) * (1 - sig(x / 0.05)) + math.exp(-x) * sig(x / 0.05) for x in (2, -1)) / 2),
    # sorted gaps: policy [-2, 2] (pair 2, pair 1), reference [-1, 0]: delta [-1, 2]
    ("aot", {"beta": 1.0}, (sp(1) + sp(-2)) / 2),
    # sorted r+ [0, 1] against sorted r- [-1, 1]: delta [1, 0]
    ("aot_unpaired", {"beta": 1.0}, (sp(-1) + math.log(2)) / 2),
    # SimPO beta 0.5, gamma 1: averages y+ [-5, -5], y- [-12, -9]: x = 0.5 [7, 4] - 1 = [2.5, 1]
    ("simpo", {"beta": 0.5, "gamma": 1.0}, (sp(-2.5) + sp(-1)) / 2),
    # CPO beta 0.1: 0.1 [2, -2] -> [sp(-0.2), sp(0.2)]; NLL = 30 nats / 6 tokens = 5
    ("cpo", {}, (sp(-0.2) + sp(0.2)) / 2 + 5),
    # ORPO: log-odds gaps [7.006754605, 4.006637332] (a+ = -5, a- = [-12, -9]); NLL 5
    ("orpo", {}, 5 + 0.1 * (sp(-7.006754605218259) + sp(-4.0066373320297854)) / 2),
    # KTO, z = 0: desirable [1 - s(1), 1 - s(0)], undesirable [1 - s(1), 1 - s(-1)]
    ("kto", {"beta": 1.0, "kl": "zero"}, ((1 - sig(1)) + 0.5 + (1 - sig(1)) + (1 - sig(-1))) / 4),
    # KTO, z = mean(r+, r-) = mean(1, 0, -1, 1) = 0.25
    ("kto", {"beta": 1.0, "kl": "batch"}, ((1 - sig(0.75)) + (1 - sig(-0.25)) + (1 - sig(1.25)) + (1 - sig(-0.75))) / 4),
    # BCO beta 1, a fresh state: delta = mean(1, 0, -1, 1) = 0.25;
    # [-log s(1 - .25), -log s(0 - .25)], [-log s(-(-1 - .25)), -log s(-(1 - .25))]
    ("bco", {"beta": 1.0}, (sp(-0.75) + sp(0.25) + sp(-1.25) + sp(0.75)) / 4),
    # TRL's sigmoid + 0.5 sft: DPO at beta 0.1 (0.671267765) + 0.5 * 5
    ("trl_dpo", {"loss_type": "sigmoid, sft", "loss_weights": "1, 0.5"}, 0.671267765 + 2.5),
])
def test_hand_values(name, hparams, expected):
    assert call(name, pairs(), **hparams).loss.item() == pytest.approx(expected, abs=1e-9)


def test_dpop_is_dpo_until_y_plus_falls_below_the_reference():
    assert call("dpop", pairs(), beta=1.0).loss.item() == pytest.approx(call("dpo", pairs(), beta=1.0).loss.item())
    # ref_chosen [-9, -20]: r+ = [-1, 0], penalty [1, 0]; lam 2: x = [0 - 2, -1] -> [sp(2), sp(1)]
    out = call("dpop", pairs(ref_chosen=T(-9, -20)), beta=1.0, lam=2.0)
    assert out.loss.item() == pytest.approx((sp(2) + sp(1)) / 2, abs=1e-12)
    assert out.metrics["dpop/penalty"] == pytest.approx(0.5)


def test_metrics_carry_trl_names_and_values():
    kto = call("kto", pairs(), beta=1.0, kl="batch").metrics
    assert kto == pytest.approx({"kl": 0.25, "rewards/chosen": 0.5, "rewards/rejected": 0.0, "rewards/margins": 0.5,
                                 "logps/chosen": -15.0, "logps/rejected": -15.0})
    orpo = call("orpo", pairs()).metrics
    assert orpo["nll_loss"] == pytest.approx(5.0) and orpo["logps/chosen"] == pytest.approx(-5.0)
    assert orpo["log_odds_chosen"] == pytest.approx((7.006754605218259 + 4.0066373320297854) / 2)
    # every TRL DPO type logs beta times the SUMMED log-ratios, even where the loss averages per token
    for name in ("sigmoid_norm", "aot", "hinge"):
        assert call(name, pairs()).metrics["rewards/chosen"] == pytest.approx(0.05), name
    combined = call("trl_dpo", pairs(), loss_type="sigmoid,sft").metrics
    assert combined["loss/sft"] == pytest.approx(5.0) and combined["loss/sigmoid"] == pytest.approx(0.671267765)


# ---- TRL 1.16.0's formulas, re-written from its source, on random log-probs ----------------------


@pytest.fixture(scope="module")
def rp() -> SequenceLogps:
    g = torch.Generator().manual_seed(5)
    n = 64
    logp = lambda: -torch.rand(n, generator=g, dtype=torch.float64) * 60 - 0.5  # noqa: E731
    return SequenceLogps(chosen=logp(), chosen_tokens=torch.randint(1, 40, (n,), generator=g),
                         rejected=logp(), rejected_tokens=torch.randint(1, 40, (n,), generator=g),
                         ref_chosen=logp(), ref_rejected=logp())


def trl_dpo_reference(p: SequenceLogps, loss_type: str, beta: float, label_smoothing: float, tau: float = 0.05):
    """dpo_trainer.py 1.16.0, reverse-KL branch: chosen_logratios etc. exactly as TRL names them."""
    chosen_logratios = p.chosen - p.ref_chosen
    rejected_logratios = p.rejected - p.ref_rejected
    delta_score = chosen_logratios - rejected_logratios
    nc, nr = p.chosen_tokens.double().clamp(min=1.0), p.rejected_tokens.double().clamp(min=1.0)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta_score)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type == "ipo":
        return (chosen_logratios / nc - rejected_logratios / nr - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        eps = torch.tensor(label_smoothing, dtype=torch.float64)
        qw, log_qw = torch.sigmoid(beta * delta_score), F.logsigmoid(beta * delta_score)
        ql, log_ql = torch.sigmoid(-beta * delta_score), F.logsigmoid(-beta * delta_score)
        return qw * (log_qw - torch.log1p(-eps)) + ql * (log_ql - torch.log(eps))
    if loss_type == "nca_pair":
        cr, rr = beta * chosen_logratios, beta * rejected_logratios
        return -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta_score)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    if loss_type == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            delta = torch.sort(p.chosen - p.rejected, dim=0)[0] - torch.sort(p.ref_chosen - p.ref_rejected, dim=0)[0]
        else:
            delta = torch.sort(chosen_logratios, dim=0)[0] - torch.sort(rejected_logratios, dim=0)[0]
        return -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        losses_rejected = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
        return torch.sigmoid(beta * chosen_logratios) + losses_rejected
    if loss_type == "discopop":
        logits = delta_score * beta
        modulation = torch.sigmoid(logits / tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    if loss_type == "sft":  # -mean over the batch's chosen tokens of their log-probs
        return (-p.chosen.sum() / p.chosen_tokens.sum()).expand(p.chosen.shape[0])
    if loss_type == "sigmoid_norm":
        return -F.logsigmoid(beta * (chosen_logratios / nc - rejected_logratios / nr))
    raise AssertionError(loss_type)


# registered under TRL's name; TRL's sigmoid, ipo, sppo_hard and sft are only in trl_dpo (ldreg's own
# dpo, ipo, sppo and sft differ: see docs/losses.md)
TRL_OWN_NAMES = ["robust", "bco_pair", "nca_pair", "exo_pair", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
                 "aot", "aot_unpaired", "hinge"]
TRL_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
             "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


@pytest.mark.parametrize("loss_type", TRL_TYPES)
@pytest.mark.parametrize("beta,eps", [(0.1, 0.1), (1.0, 0.3)])
def test_trl_dpo_types_match_trl(rp, loss_type, beta, eps):
    expected = trl_dpo_reference(rp, loss_type, beta, eps).mean()
    out = call("trl_dpo", rp, loss_type=loss_type, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    if loss_type in TRL_OWN_NAMES:  # the type registered under its own name: the same loss
        own = LOSSES.get(loss_type)
        params = {k: v for k, v in {"beta": beta, "label_smoothing": eps}.items() if k in own.defaults}
        torch.testing.assert_close(own(rp, **params).loss, expected, rtol=1e-12, atol=1e-12)
    # TRL's metrics: beta times the summed log-ratios, in float64 (equal to the last digit)
    chosen_rewards = beta * (rp.chosen - rp.ref_chosen)
    assert out.metrics["rewards/chosen"] == chosen_rewards.mean().item()


def test_trl_loss_weights_combine_types(rp):
    expected = sum(w * trl_dpo_reference(rp, t, 0.2, 0.1).mean() for t, w in
                   (("apo_zero", 0.7), ("sft", 0.3), ("robust", 2.0)))
    out = call("trl_dpo", rp, loss_type="apo_zero, sft, robust", loss_weights="0.7, 0.3, 2", beta=0.2,
               label_smoothing=0.1)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(SpecError, match=r"loss_weights has 1 weights for 2 loss types"):
        call("trl_dpo", rp, loss_type="sigmoid,sft", loss_weights="1")


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_simpo_and_cpo_match_trl_cpo_loss(rp, alpha):
    """cpo_trainer.py 1.16.0: simpo on length-averaged log-probs, sigmoid (CPO) on summed ones, + cpo_alpha nll."""
    def reward(logps):
        return (1 - torch.exp(logps).pow(-alpha)) / alpha if alpha else logps

    beta, gamma, eps = 2.0, 1.2, 0.1
    avg_c, avg_r = rp.chosen / rp.chosen_tokens, rp.rejected / rp.rejected_tokens
    logits = reward(avg_c) - reward(avg_r) - gamma / beta
    simpo = (-F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps).mean()
    out = call("simpo", rp, beta=beta, gamma=gamma, label_smoothing=eps, alpha=alpha)
    torch.testing.assert_close(out.loss, simpo, rtol=1e-10, atol=1e-12)
    assert out.metrics["rewards/chosen"] == pytest.approx((beta * reward(avg_c)).mean().item(), rel=1e-14)
    beta = 0.1
    logits = reward(rp.chosen) - reward(rp.rejected)
    nll = -rp.chosen.sum() / rp.chosen_tokens.sum()
    cpo = -F.logsigmoid(beta * logits).mean() + 1.0 * nll
    out = call("cpo", rp, alpha=alpha)
    torch.testing.assert_close(out.loss, cpo, rtol=1e-12, atol=1e-12)
    assert out.metrics["nll_loss"] == pytest.approx(nll.item(), rel=1e-14)


def test_orpo_matches_trl_odds_ratio_loss(rp):
    """orpo_trainer.py 1.16.0: log_odds on average log-probs, loss = nll - beta mean(logsigmoid(log_odds))."""
    def log1mexp(x):
        return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))

    pc, pr = rp.chosen / rp.chosen_tokens, rp.rejected / rp.rejected_tokens
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    nll = -rp.chosen.sum() / rp.chosen_tokens.sum()
    expected = nll - (0.3 * F.logsigmoid(log_odds)).mean()
    out = call("orpo", rp, beta=0.3)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    assert out.metrics["log_odds_ratio"] == pytest.approx(F.logsigmoid(log_odds).mean().item(), rel=1e-14)


def test_kto_mismatched_kl_is_trls_estimate(rp):
    """KTOTrainer 1.16.0: kl = (policy_KL_logps - reference_KL_logps).mean().clamp(min=0), detached."""
    g = torch.Generator().manual_seed(9)
    mismatched = rp.chosen + torch.randn(64, generator=g, dtype=torch.float64)
    ref_mismatched = rp.chosen + torch.randn(64, generator=g, dtype=torch.float64) - 0.3
    p = SequenceLogps(rp.chosen, rp.chosen_tokens, rp.rejected, rp.rejected_tokens, rp.ref_chosen, rp.ref_rejected,
                      mismatched=mismatched, ref_mismatched=ref_mismatched)
    kl = (mismatched - ref_mismatched).mean().clamp(min=0)
    assert kl > 0
    cr, rr = rp.chosen - rp.ref_chosen, rp.rejected - rp.ref_rejected
    expected = torch.cat((1 - torch.sigmoid(0.1 * (cr - kl)), 1 - torch.sigmoid(0.1 * (kl - rr)))).mean()
    out = call("kto", p)  # kl: mismatched is the default
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    assert out.metrics["kl"] == pytest.approx(float(kl), rel=1e-12)
    # a negative estimate is clamped at 0, as TRL clamps
    low = SequenceLogps(rp.chosen, rp.chosen_tokens, rp.rejected, rp.rejected_tokens, rp.ref_chosen, rp.ref_rejected,
                        mismatched=mismatched - 5, ref_mismatched=ref_mismatched)
    assert call("kto", low).metrics["kl"] == 0.0
    with pytest.raises(SpecError, match="mismatched.*kl: batch"):
        call("kto", pairs())  # outside training nothing fills the mismatched pairs: the message says what to do


def test_kto_and_bco_on_unpaired_rows_split_by_label():
    """Unpaired: chosen holds each row's completion; TRL splits the batch by label."""
    g = torch.Generator().manual_seed(4)
    n = 32
    logp, ref = -torch.rand(n, generator=g, dtype=torch.float64) * 30, -torch.rand(n, generator=g, dtype=torch.float64) * 30
    label = torch.rand(n, generator=g) > 0.4
    mis, ref_mis = logp.flip(0), ref.flip(0) - 1.0
    p = SequenceLogps(logp, torch.full((n,), 5), ref_chosen=ref, desirable=label, mismatched=mis, ref_mismatched=ref_mis)
    r = logp - ref
    kl = (mis - ref_mis).mean().clamp(min=0)
    expected = torch.cat((1.2 * (1 - torch.sigmoid(0.3 * (r[label] - kl))),
                          0.7 * (1 - torch.sigmoid(0.3 * (kl - r[~label]))))).mean()
    out = call("kto", p, beta=0.3, desirable_weight=1.2, undesirable_weight=0.7)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    assert out.metrics["logps/chosen"] == pytest.approx(float(logp[label].mean()))
    assert out.metrics["logps/rejected"] == pytest.approx(float(logp[~label].mean()))
    delta = float(torch.cat((0.3 * r[label], 0.3 * r[~label])).mean())
    expected = torch.cat((-F.logsigmoid(0.3 * r[label] - delta), -F.logsigmoid(-(0.3 * r[~label] - delta)))).mean()
    torch.testing.assert_close(call("bco", p, beta=0.3).loss, expected, rtol=1e-9, atol=1e-12)
    only_good = SequenceLogps(logp[label], torch.full((int(label.sum()),), 5), ref_chosen=ref[label],
                              desirable=label[label])
    metrics = call("kto", only_good, kl="zero").metrics  # a batch without an undesirable row logs that side not at all
    assert "rewards/chosen" in metrics and "rewards/rejected" not in metrics and "rewards/margins" not in metrics


class TRLRunningMoments:
    """trl/trainer/utils.py RunningMoments (1.16.0), single process: the mean and count BCO reads."""

    def __init__(self):
        self.mean, self.std, self.var, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> None:
        xs_count = xs.numel()
        xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        xs_mean, xs_var = xs_mean.float(), xs_var.float()
        delta = xs_mean - self.mean
        tot_count = self.count + xs_count
        self.mean += (delta * xs_count / tot_count).item()
        self.count = tot_count


def test_bco_matches_trl_bco_loss_over_steps(rp):
    """bco_trainer.py 1.16.0 ``bco_loss`` (no UDM): running.update(cat(rewards)), delta = running.mean,
    losses -log s(beta r+ - delta), -log s(-(beta r- - delta)), loss = mean; over three steps, one state."""
    bco, running = LOSSES.get("bco"), TRLRunningMoments()
    state = bco.new_state()
    for step in range(3):
        sl = slice(step * 16, step * 16 + 16 + 4 * step)  # unequal batch sizes: the mean is count-weighted
        p = SequenceLogps(rp.chosen[sl] + step, rp.chosen_tokens[sl], rp.rejected[sl], rp.rejected_tokens[sl],
                          rp.ref_chosen[sl], rp.ref_rejected[sl])
        chosen_rewards, rejected_rewards = 0.2 * (p.chosen - p.ref_chosen), 0.2 * (p.rejected - p.ref_rejected)
        running.update(torch.cat((chosen_rewards, rejected_rewards), 0).detach())
        delta = torch.as_tensor(running.mean, dtype=torch.float64)
        expected = torch.cat((-F.logsigmoid(chosen_rewards - delta), -F.logsigmoid(-(rejected_rewards - delta)))).mean()
        out = checked_call(bco, p, {"beta": 0.2}, state=state)
        torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)  # TRL's mean passes through float32
        assert out.metrics["delta"] == pytest.approx(running.mean, rel=1e-6)
    assert state.count == pytest.approx(2 * (16 + 20 + 24))
    # outside training (no state passed) a call starts from a fresh state: nothing it computes persists
    before = dict(state.state_dict())
    bco(p, beta=0.2)
    assert state.state_dict() == before


def test_kto_matches_trl_given_the_same_kl(rp):
    """kto_trainer.py 1.16.0, loss_type kto: cat(w_D (1 - s(beta (r+ - kl))), w_U (1 - s(beta (kl - r-)))).mean()."""
    cr, rr = rp.chosen - rp.ref_chosen, rp.rejected - rp.ref_rejected
    kl = torch.cat([cr, rr]).mean().clamp(min=0)  # the batch estimate this engine uses (TRL: mismatched pairs)
    for z, mode in ((kl, "batch"), (torch.tensor(0.0, dtype=torch.float64), "zero")):
        chosen_losses, rejected_losses = 1 - torch.sigmoid(0.2 * (cr - z)), 1 - torch.sigmoid(0.2 * (z - rr))
        expected = torch.cat((1.5 * chosen_losses, 0.5 * rejected_losses), 0).mean()
        out = call("kto", rp, beta=0.2, desirable_weight=1.5, undesirable_weight=0.5, kl=mode)
        torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)


# ---- gradients against closed forms --------------------------------------------------------------


def grads(name: str, p: SequenceLogps, **hparams):
    c, r = p.chosen.clone().requires_grad_(True), p.rejected.clone().requires_grad_(True)
    q = SequenceLogps(c, p.chosen_tokens, r, p.rejected_tokens, p.ref_chosen, p.ref_rejected)
    return torch.autograd.grad(LOSSES.get(name)(q, **hparams).loss, [c, r])


def test_gradients_match_closed_forms(rp):
    b, beta = rp.chosen.shape[0], 0.5
    cr, rr = rp.chosen - rp.ref_chosen, rp.rejected - rp.ref_rejected
    nc, nr = rp.chosen_tokens.double(), rp.rejected_tokens.double()
    s = torch.sigmoid
    ds = lambda x: s(x) * (1 - s(x))  # noqa: E731
    closed = {
        "bco_pair": ({}, -beta * (1 - s(beta * cr)) / b, beta * s(beta * rr) / b),
        "apo_zero": ({}, -beta * ds(beta * cr) / b, beta * ds(beta * rr) / b),
        "hinge": ({}, -beta * (1 - beta * (cr - rr) > 0) / b, beta * (1 - beta * (cr - rr) > 0) / b),
    }
    x = beta * (cr - rr - 3.0 * torch.relu(-cr))
    closed["dpop"] = ({"lam": 3.0}, -(1 - s(x)) * beta * (1 + 3.0 * (cr < 0)) / b, (1 - s(x)) * beta / b)
    x = beta * (rp.chosen / nc - rp.rejected / nr) - 0.4
    closed["simpo"] = ({"gamma": 0.4}, -(1 - s(x)) * beta / nc / b, (1 - s(x)) * beta / nr / b)
    x = beta * (rp.chosen - rp.rejected)
    closed["cpo"] = ({}, -(1 - s(x)) * beta / b - 1 / nc.sum(), (1 - s(x)) * beta / b)
    ac, ar = rp.chosen / nc, rp.rejected / nr
    lo = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
    closed["orpo"] = ({}, -1 / nc.sum() - beta * (1 - s(lo)) / (1 - torch.exp(ac)) / nc / b,
                      beta * (1 - s(lo)) / (1 - torch.exp(ar)) / nr / b)
    closed["kto"] = ({"kl": "zero"}, -beta * ds(beta * cr) / (2 * b), beta * ds(-beta * rr) / (2 * b))
    delta = float(beta * torch.cat([cr, rr]).mean())  # a fresh state: delta is this batch's mean reward, no gradient
    closed["bco"] = ({}, -beta * (1 - s(beta * cr - delta)) / (2 * b), beta * s(beta * rr - delta) / (2 * b))
    for name, (extra, d_chosen, d_rejected) in closed.items():
        g_c, g_r = grads(name, rp, beta=beta, **extra)
        torch.testing.assert_close(g_c, d_chosen.double(), rtol=1e-9, atol=1e-14, msg=name)
        torch.testing.assert_close(g_r, d_rejected.double(), rtol=1e-9, atol=1e-14, msg=name)


# ---- the residual G by autograd through every loss ----------------------------------------------


def _logits(seed: int, lengths):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64) * 2
    labels = torch.full((3, 7), IGNORE)
    for i, (start, n) in enumerate(lengths):
        labels[i, start:start + n] = torch.randint(0, 11, (n,), generator=g)
    return logits, labels


@pytest.mark.parametrize("name", LOSSES.names())
def test_residual_is_the_chain_rule_through_every_loss(name):
    """G = dL/dz = (dL/d log pi(y)) (e_y - pi) on each response token: no per-loss code anywhere."""
    loss = LOSSES.get(name)
    zc, lc = _logits(1, [(1, 4), (2, 2), (3, 3)])
    zr, lr = _logits(2, [(1, 5), (2, 3), (3, 1)])
    lp_c, n_c = sequence_logps(zc, lc)
    lp_r, n_r = sequence_logps(zr, lr)
    g = torch.Generator().manual_seed(3)
    ref_c = lp_c + torch.randn(3, generator=g, dtype=torch.float64)
    ref_r = lp_r + torch.randn(3, generator=g, dtype=torch.float64)
    kw = dict(ref_chosen=ref_c, ref_rejected=ref_r) if loss.needs_reference else {}
    hparams = {"kl": "batch"} if name == "kto" else {}  # outside training no mismatched pairs are computed
    out, g_c, g_r = residual_grads(loss, hparams, zc, lc, zr, lr, **kw)
    c, r = lp_c.clone().requires_grad_(True), lp_r.clone().requires_grad_(True)
    inner = loss(SequenceLogps(c, n_c, r, n_r, kw.get("ref_chosen"), kw.get("ref_rejected")), **hparams)
    d_c, d_r = torch.autograd.grad(inner.loss, [c, r], allow_unused=True)
    d_r = torch.zeros_like(r) if d_r is None else d_r
    torch.testing.assert_close(out.loss, inner.loss.detach(), rtol=0, atol=0)
    torch.testing.assert_close(g_c, -d_c.view(-1, 1, 1) * sft_direction(zc, lc), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_r, -d_r.view(-1, 1, 1) * sft_direction(zr, lr), rtol=1e-9, atol=1e-12)
    assert g_c.abs().sum() > 0, name  # every loss moves y+


# ---- typed hyper-parameters -----------------------------------------------------------------------


def _typed() -> LossDefinition:
    return LossDefinition("typed", lambda lp, on, k, x, mode: LossOutput(-lp.chosen.mean()), "t",
                          defaults={"on": False, "k": 2, "x": 0.5, "mode": "sum"},
                          constraints={"k": "[1, 8]", "x": "(0, 2)", "mode": "{sum, mean}"})


@pytest.mark.parametrize("params,problem", [
    ({"on": True, "k": 3, "x": 1, "mode": "mean"}, None),
    ({"on": 1}, None),  # a switch written as 1 (before types) still reads as true
    ({"on": 0.5}, "on: must be true or false (got 0.5)"),
    ({"on": "yes"}, "on: must be true or false (got 'yes')"),
    ({"k": 2.5}, "k: must be an integer (got 2.5)"),
    ({"k": True}, "k: must be an integer (got True)"),
    ({"k": 9}, "k: must lie in [1, 8] (got 9)"),
    ({"x": True}, "x: must be a number (got True)"),
    ({"mode": "avg"}, "mode: must be one of sum, mean (got 'avg')"),
    ({"mode": "suum"}, "mode: must be one of sum, mean (did you mean 'sum'?) (got 'suum')"),
    ({"mode": 1}, "mode: must be a string (got 1)"),
])
def test_typed_hyper_parameters(params, problem):
    assert _typed().check_params(params) == ([problem] if problem else [])


def test_coerce_keeps_types_and_declarations_are_checked():
    assert _typed().coerce({"on": 1, "x": 1, "k": 3, "mode": "mean"}) == {"on": True, "x": 1.0, "k": 3, "mode": "mean"}
    assert _typed().coerce({"x": "1e-5"})["x"] == 1e-5  # YAML reads 1e-5 without a dot as a string
    bad = LossDefinition("bad", lambda lp, mode: LossOutput(-lp.chosen.mean()), "t", defaults={"mode": "sum"},
                         constraints={"mode": "> 0"})
    assert "a string hyper-parameter's rule is a choice" in bad.declaration_problems()[0]
    worse = LossDefinition("worse", lambda lp, w: LossOutput(-lp.chosen.mean()), "t", defaults={"w": [1.0]})
    assert "a bool, int, float or str" in worse.declaration_problems()[0]


def test_dry_run_names_the_bad_parameter_and_accepts_good_ones():
    from pathlib import Path

    smoke = str(Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml")
    bad = CliRunner().invoke(main, ["run", smoke, "--dry-run", "with", "stages.0.loss=kto", "stages.0.params.kl=sum"])
    assert bad.exit_code != 0
    assert "stages[0].params.kl: must be one of mismatched, batch, zero (got 'sum') (loss 'kto')" in bad.output
    assert "Traceback" not in bad.output
    good = CliRunner().invoke(main, ["run", smoke, "--dry-run", "with", "stages.0.loss=ipo",
                                     "stages.0.params.per_token_mean=true"])
    assert good.exit_code == 0, good.output
    assert "per_token_mean: true" in good.output


def test_loss_weights_length_is_checked_with_the_spec():
    """trl_dpo: one weight per loss type, named at --dry-run, not at the first step."""
    from pathlib import Path

    smoke = str(Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml")
    bad = CliRunner().invoke(main, ["run", smoke, "--dry-run", "with", "stages.0.loss=trl_dpo",
                                    "stages.0.params.loss_type=sigmoid,sft", "stages.0.params.loss_weights=1,2,3"])
    assert bad.exit_code != 0
    assert ("stages[0].params.loss_weights: has 3 weights for 2 loss types ('sigmoid,sft'); give one weight per "
            "type, or '' for all 1 (got '1,2,3') (loss 'trl_dpo')") in bad.output, bad.output
    assert "Traceback" not in bad.output
    assert LOSSES.get("trl_dpo").check_params({"loss_type": "sigmoid, sft", "loss_weights": "1, 0.5"}) == []
    assert LOSSES.get("trl_dpo").check_params({"loss_type": "sigmoid, sft"}) == []  # '' = all 1


# ---- the engine trains with them ------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [("kto", {}), ("bco", {}), ("orpo", {}), ("simpo", {"gamma": 0.5}), ("dpop", {}),
                                         ("trl_dpo", {"loss_type": "apo_zero, sft", "loss_weights": "1, 0.5"})])
def test_one_real_step_on_a_tiny_model_logs_trl_metrics(tiny_model_dir, authors_records, name, params):
    from ldreg.data.tokenize import TokenLimits, encode_preference
    from ldreg.models import load_model, load_tokenizer
    from ldreg.spec import StageSpec
    from ldreg.train import EncodedExample, Trainer

    tok = load_tokenizer(tiny_model_dir)
    limits = TokenLimits(max_length=96, max_prompt_length=48)
    data = [EncodedExample(i, *encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], limits))
            for i, r in enumerate(authors_records[:4])]
    plugins = load_plugins()
    torch.manual_seed(0)
    scalars = {}
    trainer = Trainer(model=load_model(tiny_model_dir), backend=plugins.backends.get("cpu"), pad_id=tok.pad_token_id,
                      losses={name: plugins.losses.get(name)}, progress=False,
                      log_scalar=lambda n, v, s: scalars.setdefault(n, v))
    trainer.run([StageSpec(loss=name, name="pref", epochs=1, lr=1e-4, batch_size=4, params=params)], data)
    assert {"loss", "rewards/chosen", "rewards/margins", "logps/chosen", "residual/g_norm"} <= set(scalars), name
    assert all(math.isfinite(v) for v in scalars.values()) and scalars["residual/g_norm"] > 0

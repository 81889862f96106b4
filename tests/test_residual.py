"""G = dL/dz by autograd against docs/math.md §4's closed forms, per token, in float64.

Derivation (the scaling and signs every assertion below relies on). For one example, the summed
response log-prob is lp = sum_t log softmax(z_t)[y_t], so d lp / d z_t = e_{y_t} - pi_t at each
response position t (and 0 elsewhere). Losses are batch means, L = (1/B) sum_i l_i, and z_i enters
only l_i, hence dL/dz_i = (1/B) (dl_i/d lp) (e - pi) = -(1/B) (dl_i/d lp) (pi - e):

* SFT, l = -lp+:               dl/dlp+ = -1                    ->  G+ = (pi - e_{y+}) / B
* DPO, l = -log sigma(beta h), h = (lp+ - ref+) - (lp- - ref-), a = sigma(beta h):
                               dl/dh = -beta (1 - a), dh/dlp+ = 1, dh/dlp- = -1
                               ->  G+ = beta (1 - a)(pi - e_{y+}) / B,  G- = -beta (1 - a)(pi - e_{y-}) / B
  (cDPO, eps > 0: replace beta (1 - a) by beta [(1 - eps)(1 - a) - eps a])
* IPO, l = (h - 1/(2 beta))^2: dl/dh = 2 (h - 1/(2 beta))
                               ->  G+ = 2 (1/(2 beta) - h)(pi - e_{y+}) / B,  G- = -2 (1/(2 beta) - h)(pi - e_{y-}) / B
  (TRL's per-token form divides lp± and ref± by n±, so each side also gets a 1/n± factor)

The logits at position t predict token t+1 (``shifted``), so G lives at logits[:, t] for every t
with labels[:, t+1] != -100, and is exactly zero at prompt, padding and final positions.
"""

from __future__ import annotations

import pytest
import torch

from ldreg.dynamics.logprobs import IGNORE, EncodedPair, collate, sequence_logps
from ldreg.dynamics.residual import (
    dpo_residual, ipo_residual, residual_from_logits, residual_grads,
    sft_residual, summarize_residual)
from ldreg.errors import SpecError
from ldreg.registry import load_plugins

LOSSES = load_plugins().losses
B, T, V = 3, 7, 11


def random_batch(seed: int, prompt_lengths=(1, 2, 3), response_lengths=(4, 2, 3)):
    """float64 logits [B, T, V] and labels with a masked prompt and right padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.full((B, T), IGNORE)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        labels[i, p:p + r] = torch.randint(0, V, (r,), generator=g)
    return logits, labels


def by_hand(logits, labels, coefficient):
    """coefficient[i] * (softmax(z_{i,t}) - e_{y_{i,t+1}}) at every response position, token by token."""
    expected = torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(labels[i, t + 1])
            if y == IGNORE:
                continue
            direction = torch.softmax(logits[i, t], dim=-1)
            direction[y] -= 1.0
            expected[i, t] = float(coefficient[i]) * direction
    return expected


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)  # float64 does far better


@pytest.fixture
def pair_batch():
    chosen, chosen_labels = random_batch(1)
    rejected, rejected_labels = random_batch(2, prompt_lengths=(1, 2, 3), response_lengths=(5, 3, 1))
    g = torch.Generator().manual_seed(3)
    lp_c, _ = sequence_logps(chosen, chosen_labels)
    lp_r, _ = sequence_logps(rejected, rejected_labels)
    # reference log-probs near the policy's, so h spreads on both sides of 0 and of 1/(2 beta)
    ref_c = lp_c + torch.randn(B, generator=g, dtype=torch.float64) * 3
    ref_r = lp_r + torch.randn(B, generator=g, dtype=torch.float64) * 3
    return dict(chosen_logits=chosen, chosen_labels=chosen_labels, rejected_logits=rejected,
                rejected_labels=rejected_labels), ref_c, ref_r


def margin(batch, ref_c, ref_r, per_token=False):
    lp_c, n_c = sequence_logps(batch["chosen_logits"], batch["chosen_labels"])
    lp_r, n_r = sequence_logps(batch["rejected_logits"], batch["rejected_labels"])
    if per_token:
        return (lp_c - ref_c) / n_c - (lp_r - ref_r) / n_r, n_c.double(), n_r.double()
    return (lp_c - ref_c) - (lp_r - ref_r), torch.ones(B, dtype=torch.float64), torch.ones(B, dtype=torch.float64)


# ---- SFT ----------------------------------------------------------------------------------------


def test_sft_residual_is_pi_minus_e_over_batch():
    logits, labels = random_batch(0)
    _, grad, rejected = residual_grads(LOSSES.get("sft"), {}, logits, labels)
    assert rejected is None
    expected = by_hand(logits, labels, torch.full((B,), 1.0 / B, dtype=torch.float64))
    close(grad, expected)
    close(sft_residual(logits, labels), expected)
    # nothing off the response: prompt of example 2 (positions 0..1 predict prompt tokens) and the tail
    assert grad[2, :2].abs().max() == 0 and grad[:, -1].abs().max() == 0


def test_extend_sft_gives_both_responses_half_weight(pair_batch):
    batch, _, _ = pair_batch
    _, g_c, g_r = residual_grads(LOSSES.get("extend_sft"), {}, **batch)
    # L = -(1/2B) sum over 2B sequences: G = (pi - e)/(2B) on y+ and on y-
    half = torch.full((B,), 0.5 / B, dtype=torch.float64)
    close(g_c, by_hand(batch["chosen_logits"], batch["chosen_labels"], half))
    close(g_r, by_hand(batch["rejected_logits"], batch["rejected_labels"], half))


# ---- DPO and IPO: autograd == hand formula == closed form ------------------------------------------


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (1.0, 0.0), (0.5, 0.2)])
def test_dpo_residual_matches_closed_form(pair_batch, beta, eps):
    batch, ref_c, ref_r = pair_batch
    _, g_c, g_r = residual_grads(LOSSES.get("dpo"), {"beta": beta, "label_smoothing": eps}, **batch,
                                 ref_chosen=ref_c, ref_rejected=ref_r)
    h, _, _ = margin(batch, ref_c, ref_r)
    a = torch.sigmoid(beta * h)
    c = beta * ((1 - eps) * (1 - a) - eps * a) / B
    close(g_c, by_hand(batch["chosen_logits"], batch["chosen_labels"], c))
    close(g_r, by_hand(batch["rejected_logits"], batch["rejected_labels"], -c))
    closed_c, closed_r = dpo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=beta,
                                      label_smoothing=eps)
    close(g_c, closed_c)
    close(g_r, closed_r)


def test_spin_residual_is_dpo_residual_against_the_opponent(pair_batch):
    batch, ref_c, ref_r = pair_batch
    _, g_c, g_r = residual_grads(LOSSES.get("spin"), {}, **batch, ref_chosen=ref_c, ref_rejected=ref_r)
    closed_c, closed_r = dpo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=0.1)
    close(g_c, closed_c)
    close(g_r, closed_r)


@pytest.mark.parametrize("beta,per_token", [(0.1, False), (2.0, False), (0.5, True)])
def test_ipo_residual_matches_closed_form(pair_batch, beta, per_token):
    batch, ref_c, ref_r = pair_batch
    _, g_c, g_r = residual_grads(LOSSES.get("ipo"), {"beta": beta, "per_token_mean": float(per_token)},
                                 **batch, ref_chosen=ref_c, ref_rejected=ref_r)
    h, n_c, n_r = margin(batch, ref_c, ref_r, per_token)
    c = 2 * (1 / (2 * beta) - h) / B
    close(g_c, by_hand(batch["chosen_logits"], batch["chosen_labels"], c / n_c))
    close(g_r, by_hand(batch["rejected_logits"], batch["rejected_labels"], -c / n_r))
    closed_c, closed_r = ipo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=beta,
                                      per_token_mean=per_token)
    close(g_c, closed_c)
    close(g_r, closed_r)


def test_ipo_pushes_back_once_the_margin_passes_its_target(pair_batch):
    """Pairs whose margin h already exceeds the target 1/(2 beta) get G+ along -(pi - e_{y+}): a
    descent step lowers log pi(y+). DPO's G+ is always along +(pi - e_{y+})."""
    batch, ref_c, ref_r = pair_batch
    h, _, _ = margin(batch, ref_c, ref_r)
    ref_c = ref_c + h.min() - 0.1  # shift every margin so that min(h) = 0.1 > 0
    h, _, _ = margin(batch, ref_c, ref_r)
    target = float((h.min() + h.max()) / 2)
    beta = 1 / (2 * target)
    assert (h > target).any() and (h < target).any()
    closed_c, _ = ipo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=beta)
    dpo_c, _ = dpo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=beta)
    direction = by_hand(batch["chosen_logits"], batch["chosen_labels"], torch.ones(B, dtype=torch.float64))
    ipo_sign = torch.sign((closed_c * direction).sum((1, 2)))
    assert ipo_sign.tolist() == torch.where(h > target, -1.0, 1.0).tolist()
    assert ((dpo_c * direction).sum((1, 2)) > 0).all()


# ---- the other losses: the residuals their docstrings state ----------------------------------------


def test_slic_residual_active_and_inactive_pairs(pair_batch):
    batch, _, _ = pair_batch
    lp_c, _ = sequence_logps(batch["chosen_logits"], batch["chosen_labels"])
    lp_r, _ = sequence_logps(batch["rejected_logits"], batch["rejected_labels"])
    delta = float((lp_c - lp_r).median()) + 1e-3  # the median pair just active, off the kink
    active = (delta - lp_c + lp_r > 0).double()
    assert 0 < active.sum() < B
    _, g_c, g_r = residual_grads(LOSSES.get("slic"), {"delta": delta, "lam": 0.3}, **batch)
    close(g_c, by_hand(batch["chosen_logits"], batch["chosen_labels"], (active + 0.3) / B))
    close(g_r, by_hand(batch["rejected_logits"], batch["rejected_labels"], -active / B))


@pytest.mark.parametrize("soft", [False, True])
def test_sppo_residual_two_separate_terms(pair_batch, soft):
    batch, ref_c, ref_r = pair_batch
    beta, p_win = 0.5, torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    hparams = {"beta": beta, "soft": float(soft)}
    _, g_c, g_r = residual_grads(LOSSES.get("sppo"), hparams, **batch, ref_chosen=ref_c,
                                 ref_rejected=ref_r, chosen_prob=p_win if soft else None)
    lp_c, _ = sequence_logps(batch["chosen_logits"], batch["chosen_labels"])
    lp_r, _ = sequence_logps(batch["rejected_logits"], batch["rejected_labels"])
    p = p_win if soft else torch.ones(B, dtype=torch.float64)
    # l = 1/2[(r+ - (p - 1/2)/beta)^2 + (r- - (1/2 - p)/beta)^2]: dl/dr± = (r± - target±), G± = -(dl/dr±)(pi - e)/B
    c_plus = -((lp_c - ref_c) - (p - 0.5) / beta) / B
    c_minus = -((lp_r - ref_r) - (0.5 - p) / beta) / B
    close(g_c, by_hand(batch["chosen_logits"], batch["chosen_labels"], c_plus))
    close(g_r, by_hand(batch["rejected_logits"], batch["rejected_labels"], c_minus))


# ---- summaries -----------------------------------------------------------------------------------


def test_sft_summary_is_the_mean_token_norm_of_pi_minus_e():
    logits, labels = random_batch(5)
    res = residual_from_logits(LOSSES.get("sft"), {}, logits, labels)
    assert res.scale == B and res.rejected_norm is None
    ones = torch.ones(B, dtype=torch.float64)
    per_token = by_hand(logits, labels, ones).norm(dim=-1)  # ||pi - e_y||, 0 off the response
    counts = (labels[:, 1:] != IGNORE).sum(-1)
    torch.testing.assert_close(res.token_norm, per_token.sum(-1) / counts, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.norm, per_token.pow(2).sum(-1).sqrt(), rtol=1e-12, atol=0)
    assert res.chosen_fraction.tolist() == [1.0] * B
    raw = residual_from_logits(LOSSES.get("sft"), {}, logits, labels, per_example=False)
    torch.testing.assert_close(raw.token_norm * B, res.token_norm, rtol=1e-12, atol=0)
    assert res.output.loss.item() == pytest.approx(-sequence_logps(logits, labels)[0].mean().item())


def test_dpo_summary_splits_chosen_and_rejected(pair_batch):
    batch, ref_c, ref_r = pair_batch
    res = residual_from_logits(LOSSES.get("dpo"), {"beta": 1.0}, **batch, ref_chosen=ref_c, ref_rejected=ref_r)
    h, _, _ = margin(batch, ref_c, ref_r)
    c = 1.0 * (1 - torch.sigmoid(h))  # per example (times B): beta (1 - a)
    tokens_c = by_hand(batch["chosen_logits"], batch["chosen_labels"], c).norm(dim=-1)
    tokens_r = by_hand(batch["rejected_logits"], batch["rejected_labels"], c).norm(dim=-1)
    n_c = (batch["chosen_labels"][:, 1:] != IGNORE).sum(-1)
    n_r = (batch["rejected_labels"][:, 1:] != IGNORE).sum(-1)
    torch.testing.assert_close(res.chosen_norm, tokens_c.pow(2).sum(-1).sqrt())
    torch.testing.assert_close(res.rejected_norm, tokens_r.pow(2).sum(-1).sqrt())
    torch.testing.assert_close(res.chosen_token_norm, tokens_c.sum(-1) / n_c)
    torch.testing.assert_close(res.rejected_token_norm, tokens_r.sum(-1) / n_r)
    torch.testing.assert_close(res.token_norm, (tokens_c.sum(-1) + tokens_r.sum(-1)) / (n_c + n_r))
    torch.testing.assert_close(res.norm ** 2, res.chosen_norm ** 2 + res.rejected_norm ** 2)
    torch.testing.assert_close(res.chosen_fraction, res.chosen_norm ** 2 / res.norm ** 2)
    assert set(res.output.metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins",
                                       "rewards/accuracies", "logps/chosen", "logps/rejected"}
    values = res.values()
    assert set(values) == {"G/token_norm", "G/norm", "G/chosen_token_norm", "G/chosen_norm",
                           "G/chosen_fraction", "G/rejected_token_norm", "G/rejected_norm"}
    assert all(len(v) == B for v in values.values())


def test_zero_residual_has_undefined_chosen_fraction(pair_batch):
    """SLiC with lam = 0 and every hinge inactive has G = 0: the fraction is NaN, not a made-up 0 or 1."""
    batch, _, _ = pair_batch
    # y- is y+ itself, so the gap is 0 and max(0, 0 - 0) = 0 for every pair
    same = (batch["chosen_logits"], batch["chosen_labels"])
    res = residual_from_logits(LOSSES.get("slic"), {"delta": 0.0, "lam": 0.0}, *same, *same)
    assert res.norm.tolist() == [0.0] * B
    assert torch.isnan(res.chosen_fraction).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_has_a_residual(pair_batch, name):
    batch, ref_c, ref_r = pair_batch
    loss = LOSSES.get(name)
    extra = dict(ref_chosen=ref_c, ref_rejected=ref_r) if loss.needs_reference else {}
    if not loss.needs_rejected:
        batch = {k: v for k, v in batch.items() if k.startswith("chosen")}
    hparams = {"kl": "batch"} if name == "kto" else {}  # outside training no mismatched pairs are computed
    res = residual_from_logits(loss, hparams, **batch, **extra)
    assert torch.isfinite(res.token_norm).all() and (res.norm >= 0).all()
    assert torch.isfinite(res.output.loss)


def test_missing_rejected_logits_is_a_clear_error():
    logits, labels = random_batch(0)
    with pytest.raises(SpecError, match="loss 'dpo' needs the rejected responses' logits"):
        residual_from_logits(LOSSES.get("dpo"), {}, logits, labels)
    with pytest.raises(SpecError, match="together"):
        residual_from_logits(LOSSES.get("sft"), {}, logits, labels, rejected_logits=logits)
    with pytest.raises(SpecError, match="ref_chosen"):
        residual_from_logits(LOSSES.get("dpo"), {}, logits, labels, logits, labels)


# ---- on a real (tiny) model's logits ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pairs(tiny_model_dir, authors_records):
    """A float64 tiny GPT-NeoX and three real HH pairs, collated as the trainer does."""
    from ldreg.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype=torch.float64)
    encode = lambda text: tuple(tok(text).input_ids)  # noqa: E731
    records = authors_records[:3]
    chosen = [EncodedPair(encode(r["prompt"])[-12:], encode(r["chosen"])[:10]) for r in records]
    rejected = [EncodedPair(encode(r["prompt"])[-12:], encode(r["rejected"])[:8]) for r in records]
    return model, collate(chosen, tok.pad_token_id), collate(rejected, tok.pad_token_id)


def test_tiny_model_autograd_matches_closed_forms(tiny_pairs):
    model, chosen, rejected = tiny_pairs
    with torch.no_grad():
        z_c = model(input_ids=chosen.input_ids, attention_mask=chosen.attention_mask).logits
        z_r = model(input_ids=rejected.input_ids, attention_mask=rejected.attention_mask).logits
    assert z_c.dtype == torch.float64
    batch = dict(chosen_logits=z_c, chosen_labels=chosen.labels, rejected_logits=z_r,
                 rejected_labels=rejected.labels)
    lp_c, _ = sequence_logps(z_c, chosen.labels)
    lp_r, _ = sequence_logps(z_r, rejected.labels)
    ref_c, ref_r = lp_c + torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), lp_r - 0.7

    _, g, _ = residual_grads(LOSSES.get("sft"), {}, z_c, chosen.labels)
    close(g, sft_residual(z_c, chosen.labels))
    for name, hparams, closed in [
        ("dpo", {"beta": 0.1}, dpo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=0.1)),
        ("ipo", {"beta": 0.1}, ipo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=0.1)),
        ("ipo", {"beta": 0.1, "per_token_mean": 1.0},
         ipo_residual(**batch, ref_chosen=ref_c, ref_rejected=ref_r, beta=0.1, per_token_mean=True)),
    ]:
        _, g_c, g_r = residual_grads(LOSSES.get(name), hparams, **batch, ref_chosen=ref_c, ref_rejected=ref_r)
        close(g_c, closed[0])
        close(g_r, closed[1])


def test_trainer_path_retained_grad_gives_the_same_summary(tiny_pairs):
    """The trainer's cheap path: retain the logits' grad in its own backward, then summarise it.
    It must agree with the detached recomputation, and the recomputation must not touch the model."""
    model, chosen, rejected = tiny_pairs
    loss = LOSSES.get("dpo")
    both = collate_both(chosen, rejected)
    logits = model(input_ids=both.input_ids, attention_mask=both.attention_mask).logits
    logits.retain_grad()
    from ldreg.losses import SequenceLogps

    lp, n = sequence_logps(logits, both.labels)
    ref = lp.detach() - 0.3
    inputs = SequenceLogps(lp[:3], n[:3], lp[3:], n[3:], ref[:3], ref[3:])
    out = loss(inputs)

    detached = residual_from_logits(loss, {}, logits[:3], both.labels[:3], logits[3:], both.labels[3:],
                                    ref_chosen=ref[:3], ref_rejected=ref[3:])
    assert all(p.grad is None for p in model.parameters())  # the residual never reached the model
    out.loss.backward()
    retained = summarize_residual(logits.grad[:3], both.labels[:3], logits.grad[3:], both.labels[3:],
                                  output=out, scale=3)
    for field in ("token_norm", "norm", "chosen_norm", "rejected_norm", "chosen_fraction"):
        torch.testing.assert_close(getattr(retained, field), getattr(detached, field), rtol=1e-9, atol=1e-12)
    model.zero_grad(set_to_none=True)


def collate_both(chosen, rejected):
    """Chosen and rejected in one right-padded batch (the trainer's layout: y+ rows, then y- rows)."""
    from ldreg.dynamics.logprobs import Batch

    width = max(chosen.input_ids.shape[1], rejected.input_ids.shape[1])
    pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
    return Batch(torch.cat([pad(chosen.input_ids, 0), pad(rejected.input_ids, 0)]),
                 torch.cat([pad(chosen.attention_mask, 0), pad(rejected.attention_mask, 0)]),
                 torch.cat([pad(chosen.labels, IGNORE), pad(rejected.labels, IGNORE)]))


@pytest.mark.parametrize("name, params, coupled", [("dpo", {}, False), ("sft", {}, False),
                                                   ("cpo", {"cpo_alpha": 1.0}, True), ("aot", {}, True)])
def test_per_example_residual_is_its_own_only_for_means_of_per_example_terms(pair_batch, name, params, coupled):
    """residual.py's docstring: B dL/dz_i is example i's own residual when the batch loss is a mean of
    per-example terms; CPO's batch-token-mean NLL and AOT's sorting make it depend on the others.
    Only example 2 is changed (a longer y+, a reference far off); example 0's G is compared."""
    batch, ref_c, ref_r = pair_batch
    loss = LOSSES.get(name)
    if not loss.needs_rejected:
        batch = {k: v for k, v in batch.items() if k.startswith("chosen")}

    def g0(batch, ref_c):
        extra = dict(ref_chosen=ref_c, ref_rejected=ref_r) if loss.needs_reference else {}
        return residual_grads(loss, params, **batch, **extra)[1][0]

    longer = dict(batch, chosen_labels=batch["chosen_labels"].clone())
    longer["chosen_labels"][2, -1] = 4  # example 2's y+ gains a token
    shifted = [ref_c.clone() + torch.tensor([0.0, 0.0, d], dtype=torch.float64) for d in (-1000.0, 1000.0)]
    base = g0(batch, ref_c)
    changed = [not torch.allclose(base, g0(longer, ref_c), rtol=0, atol=1e-12)]
    changed += [not torch.allclose(base, g0(batch, r), rtol=0, atol=1e-12) for r in shifted]
    assert any(changed) == coupled, changed

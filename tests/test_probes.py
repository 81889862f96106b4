"""The probe engine: hand-checked values on models whose pi is set by hand, and the tiny model
against a slow per-example loop (the authors' way)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldreg.dynamics.batching import length_buckets, padding_fraction
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.dynamics.probes import QUANTITIES, a_norm_bounds, probe, probe_observations, token_statistics
from ldreg.models import load_model, load_tokenizer


class TableModel(torch.nn.Module):
    """Logits at a position are a fixed row chosen by that position's input token: pi is known."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


V = 8


def _pairs(responses, prompt=(1,)):
    return [EncodedPair(tuple(prompt), tuple(r)) for r in responses]


def test_uniform_distribution_gives_the_known_values():
    model = TableModel(torch.zeros(V, V))
    out = probe(model, {"y": _pairs([(2, 3, 4)])}, [7])["y"]
    L = 3
    assert out["n_tokens"][0] == L
    assert out["logp_sum"][0] == pytest.approx(-L * math.log(V), rel=1e-6)
    assert out["logp_mean"][0] == pytest.approx(-math.log(V), rel=1e-6)
    assert out["argmax_logp"][0] == pytest.approx(-L * math.log(V), rel=1e-6)
    assert out["nonargmax"][0] == pytest.approx(L * math.log(1 - 1 / V), rel=1e-5)
    assert out["a_norm"][0] == pytest.approx(math.sqrt(V - 1), rel=1e-6)
    assert out["a_norm_authors"][0] == pytest.approx(math.sqrt(V - 1), rel=1e-6)
    assert out["g_norm"][0] == pytest.approx(math.sqrt(1 - 1 / V), rel=1e-6)
    assert out["energy"][0] == pytest.approx(1 - 1 / V, rel=1e-6)


def test_one_hot_distribution_is_finite_and_hits_the_upper_bound():
    # after token t the model puts logit 1e4 on token (t + 1) % V: p* is exactly 1 in fp32
    table = torch.zeros(V, V)
    for t in range(V):
        table[t, (t + 1) % V] = 1e4
    model = TableModel(table)
    follows = _pairs([(2, 3, 4)], prompt=(1,))  # every target is the argmax
    misses = _pairs([(5, 5, 5)], prompt=(1,))  # after 1 the argmax is 2, after 5 it is 6: all wrong
    out = probe(model, {"follows": follows, "misses": misses}, [0])
    for values in out.values():
        for q in QUANTITIES:
            assert np.isfinite(values[q]).all(), q
        assert values["a_norm"][0] == pytest.approx(math.sqrt(2 * V - 2), rel=1e-6)
        assert values["argmax_logp"][0] == pytest.approx(0.0, abs=1e-6)
        assert values["nonargmax"][0] == pytest.approx(3 * (math.log(V - 1) - 1e4), rel=1e-6)
    assert out["follows"]["g_norm"][0] == pytest.approx(0.0, abs=1e-6)
    assert out["follows"]["energy"][0] == pytest.approx(0.0, abs=1e-6)
    assert out["misses"]["g_norm"][0] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert out["misses"]["energy"][0] == pytest.approx(1.0, rel=1e-6)
    assert a_norm_bounds(V) == pytest.approx((math.sqrt(V - 1), math.sqrt(2 * V - 2)))


def test_nonargmax_is_exact_where_p_star_rounds_to_one_in_fp32():
    eps = 1e-9  # 1 - p*: far below fp32 resolution near 1
    peak = math.log((V - 1) * (1 - eps) / eps)
    logits = torch.zeros(1, V)
    logits[0, 0] = peak
    p_star = torch.softmax(logits, -1)[0, 0]
    assert p_star.item() == 1.0  # the authors' log(1 - p* + 1e-100) is -inf / NaN here
    stats = token_statistics(logits, torch.tensor([0]))
    assert stats["nonargmax"].item() == pytest.approx(math.log(eps), rel=1e-4)
    assert stats["energy"].item() == pytest.approx(eps, rel=1e-3)
    assert stats["g_norm"].item() == pytest.approx(math.sqrt(eps**2 + (V - 1) * (eps / (V - 1)) ** 2), rel=1e-3)


def test_authors_a_norm_averages_pi_norm_before_the_formula():
    # position after token 0: uniform; after token 1: one-hot on token 2
    table = torch.zeros(V, V)
    table[1, 2] = 1e4
    out = probe(TableModel(table), {"y": _pairs([(1, 2)], prompt=(0,))}, [0])["y"]
    assert out["a_norm"][0] == pytest.approx((math.sqrt(V - 1) + math.sqrt(2 * V - 2)) / 2, rel=1e-6)
    mean_pi = (1 / math.sqrt(V) + 1) / 2
    assert out["a_norm_authors"][0] == pytest.approx(math.sqrt(V * mean_pi**2 + V - 2), rel=1e-6)
    assert out["a_norm_authors"][0] != pytest.approx(out["a_norm"][0], rel=1e-3)


def test_length_buckets_cover_every_index_once_within_the_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2, 30]
    batches = length_buckets(lengths, max_tokens_per_batch=12)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [7]  # longer than the budget: alone, and first
    for b in batches[1:]:
        assert len(b) * max(lengths[i] for i in b) <= 12
    assert length_buckets(lengths, 1000, max_batch_size=3)[0] == [7, 2, 5]
    assert 0.0 <= padding_fraction(lengths, batches) < padding_fraction(lengths, [list(range(len(lengths)))])
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        length_buckets(lengths, 0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, authors_records):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    records = authors_records[:12]

    def encode(text, limit):
        return tuple(tokenizer(text)["input_ids"][:limit])

    pairs = {t: [EncodedPair(encode(r["prompt"], 60), encode(r[t], 40)) for r in records]
             for t in ("chosen", "rejected", "irr_hum")}
    return SimpleNamespace(model=model, pad=tokenizer.pad_token_id, pairs=pairs, ids=[100 + i for i in range(12)])


def _slow_logp(model, pair):
    """One example at a time, the whole sequence, fp32 log-softmax: the authors' way."""
    ids = torch.tensor([list(pair.prompt_ids) + list(pair.response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(pair.prompt_ids)
    return sum(float(logp[start + j - 1, tok]) for j, tok in enumerate(pair.response_ids))


def test_logp_sum_matches_a_slow_per_example_loop(tiny):
    out = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, max_tokens_per_batch=600)
    for rtype, pairs in tiny.pairs.items():
        slow = np.array([_slow_logp(tiny.model, p) for p in pairs])
        np.testing.assert_allclose(out[rtype]["logp_sum"], slow, rtol=1e-5)
        np.testing.assert_array_equal(out[rtype]["n_tokens"], [len(p.response_ids) for p in pairs])


def test_bucketing_and_prompt_sharing_give_the_same_values(tiny):
    one_batch = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, max_tokens_per_batch=10**6)
    singles = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, max_tokens_per_batch=1)
    shared = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, max_tokens_per_batch=400, share_prompts=True)
    for other in (singles, shared):
        for rtype in tiny.pairs:
            for q in QUANTITIES:
                np.testing.assert_allclose(other[rtype][q], one_batch[rtype][q], rtol=1e-5, atol=1e-6, err_msg=q)


def test_probe_restores_training_mode_and_runs_under_bf16_autocast(tiny):
    from ldreg_plugins.backends.cpu import CPUBackend

    tiny.model.train()
    fp32 = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad)
    bf16 = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad, backend=CPUBackend(), dtype=torch.bfloat16)
    assert tiny.model.training
    tiny.model.eval()
    assert bf16["chosen"]["logp_sum"].dtype == np.float64
    np.testing.assert_allclose(bf16["chosen"]["logp_sum"], fp32["chosen"]["logp_sum"], rtol=5e-2)


def test_misaligned_ids_are_refused(tiny):
    with pytest.raises(ValueError, match="'chosen' has 12 pairs but there are 3 example ids"):
        probe(tiny.model, tiny.pairs, [1, 2, 3], pad_id=tiny.pad)


def test_examples_whose_prompt_differs_between_types_are_probed_type_by_type(tiny):
    """Truncation can cut one type's prompt to fit a long response: sharing must not fail or mix them."""
    pairs = {t: list(p) for t, p in tiny.pairs.items()}
    other = next(t for t in pairs if t != "chosen")
    first = pairs[other][1]
    pairs[other][1] = EncodedPair(first.prompt_ids[1:], first.response_ids)  # its prompt lost a token
    first = pairs[other][2]
    pairs[other][2] = EncodedPair((), first.response_ids)  # and an empty prompt
    plain = probe(tiny.model, pairs, tiny.ids, pad_id=tiny.pad)
    shared = probe(tiny.model, pairs, tiny.ids, pad_id=tiny.pad, share_prompts=True)
    for rtype in pairs:
        for q in QUANTITIES:
            np.testing.assert_allclose(shared[rtype][q], plain[rtype][q], rtol=1e-5, atol=1e-6, err_msg=q)


def test_probe_observations_carry_every_quantity_per_type(tiny):
    out = probe(tiny.model, tiny.pairs, tiny.ids, pad_id=tiny.pad)
    obs = probe_observations(out, tiny.ids, step=3, examples_seen=12, stage="sft", stage_index=0, probe_set="train")
    assert [o.response_type for o in obs] == list(tiny.pairs)
    first = obs[0]
    assert first.kind == "probe" and first.step == 3 and first.example_ids == tiny.ids
    assert set(first.values) == set(QUANTITIES)
    assert first.values["logp_sum"] == pytest.approx(list(out["chosen"]["logp_sum"]))
    assert all(isinstance(v, float) for v in first.values["a_norm"])

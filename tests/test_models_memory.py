"""Log-probs without vocabulary-sized copies: the chunked forms equal the plain ones, values and gradients."""

from __future__ import annotations

import pytest
import torch

from ldreg.data.authors import resolve_source
from ldreg.data.errors import DataError
from ldreg.dynamics.logprobs import IGNORE, EncodedPair, collate, model_sequence_logps, sequence_logps, token_logps
from ldreg.models import build_tiny_model, load_model


def _plain(logits, labels):
    """The textbook form: a full log-softmax, then gather."""
    z, y = logits[:, :-1], labels[:, 1:]
    mask = y != IGNORE
    return (torch.log_softmax(z.double(), -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)


@pytest.mark.parametrize("chunk", [1, 37, 1 << 24])
def test_chunked_token_logps_equal_log_softmax_in_value_and_gradient(chunk):
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 29, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 29, (3, 11))
    labels[:, :4] = IGNORE
    labels[1, 8:] = IGNORE
    per_token, mask = token_logps(logits, labels, chunk_elements=chunk)
    ours = per_token.sum(-1)
    expected = _plain(logits, labels)
    torch.testing.assert_close(ours, expected)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_plain,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(g_ours, g_plain)
    assert mask.sum().item() == (labels[:, 1:] != IGNORE).sum().item()


def test_bf16_logits_give_fp32_log_probs():
    logits = torch.randn(2, 5, 13).to(torch.bfloat16)
    labels = torch.randint(0, 13, (2, 5))
    assert sequence_logps(logits, labels)[0].dtype == torch.float32


@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
def test_response_positions_only_equals_the_full_forward(tmp_path, english_texts, architecture):
    path = build_tiny_model(tmp_path / architecture, english_texts[:200], vocab_size=400, architecture=architecture,
                            hidden_size=32, layers=2, heads=4)
    model = load_model(path).eval()
    pairs = [EncodedPair((5, 6, 7, 8, 9), (10, 11, 12)), EncodedPair((5, 6), (13, 14, 15, 16, 17, 18)),
             EncodedPair((20, 21, 22), (23,))]
    batch = collate(pairs, pad_id=0)
    with torch.inference_mode():
        full, n_full = sequence_logps(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                      batch.labels)
        kept, n_kept = model_sequence_logps(model, batch, chunk_elements=400 * 2)
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-5)
    assert n_kept.tolist() == n_full.tolist() == [3, 6, 1]


def test_authors_source_names_the_shipped_files():
    path = resolve_source("authors:helpful-base/test")
    assert path.name == "formal_prob_test.jsonl" and path.stat().st_size > 1_000_000
    with pytest.raises(DataError, match="authors:helpful-base/train"):
        resolve_source("authors:harmless-base/train")
    with pytest.raises(DataError, match="choose one of train, test"):
        resolve_source("authors:helpful-base/validation")

"""Probing sets: the authors' import, save/load round-trip, building from plugins, encoding."""

from __future__ import annotations

import json

import pytest

from conftest import AUTHORS_PROBES
from ldreg.data.errors import DataError
from ldreg.data.probing import (AUTHORS_FIELDS, ProbingSet, build_probing_set, encode_probing_set,
                                import_authors_probes)
from ldreg.data.tokenize import TokenLimits
from ldreg.errors import PluginError
from ldreg.registry import get_plugins
from ldreg.responses import GenerationContext, PreferenceExample

TRAIN_FILE = AUTHORS_PROBES / "formal_prob_train.jsonl"


@pytest.fixture(scope="module")
def authors():
    return import_authors_probes(TRAIN_FILE)


def test_authors_import_has_500_records_and_every_type(authors, authors_records):
    assert len(authors) == 500
    assert set(authors.types) == set(AUTHORS_FIELDS.values()) and len(authors.types) == 13
    # every type is a registered generator name, so generated and imported sets compare type by type
    assert set(authors.types) <= set(get_plugins().responses.names())
    r = authors_records[7]
    assert authors.examples[7].prompt == r["prompt"]
    assert authors.responses["chosen_rephrase_semantic"][7] == r["chosen_gptsemantic"]
    assert authors.responses["rejected_rephrase_format"][7] == r["reject_gptformat"]
    assert authors.responses["random_sentence"][7] == r["irr_hum"]
    assert authors.responses["random_permuted"][7] == r["random_nonhum"]
    assert authors.responses["initial"][7] == r["chosen_initial"]
    assert authors.metadata["source"] == "authors"
    assert "GPT-3.5" in authors.metadata["provenance"]["chosen_rephrase_semantic"]
    assert authors.metadata["fields"]["random_sentence"] == "irr_hum"


def test_authors_import_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    with pytest.raises(DataError, match="missing chosen_initial"):
        import_authors_probes(bad)


def test_save_load_round_trip(tmp_path, authors):
    small = ProbingSet("s", authors.examples[:20], {k: v[:20] for k, v in authors.responses.items()}, authors.metadata)
    path = small.save(tmp_path / "probe.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 21 and json.loads(lines[0])["types"] == small.types
    assert set(json.loads(lines[1])["responses"]) == set(small.types)
    loaded = ProbingSet.load(path)
    assert loaded.examples == small.examples and loaded.responses == small.responses
    assert loaded.metadata == small.metadata and loaded.fingerprint() == small.fingerprint()


def test_an_edited_file_is_refused(tmp_path, authors):
    small = ProbingSet("s", authors.examples[:3], {"chosen": authors.responses["chosen"][:3]})
    path = small.save(tmp_path / "p.jsonl")
    path.write_text(path.read_text(encoding="utf-8").replace("horseshoe", "horsefly"), encoding="utf-8")
    with pytest.raises(DataError, match="fingerprint"):
        ProbingSet.load(path)
    with pytest.raises(DataError, match="import_authors_probes"):
        ProbingSet.load(TRAIN_FILE)


def test_build_from_registry_and_unknown_type_lists_installed(authors):
    examples = authors.examples[:8]
    ctx = GenerationContext(seed=3, train_pool=authors.examples[:100], test_pool=authors.examples[100:200])
    types = ["chosen", "rejected", "chosen_rephrase_semantic", "random_sentence", "random_permuted", "irrelevant_train"]
    built = build_probing_set(examples, types, ctx, name="mine")
    again = build_probing_set(examples, types, ctx, name="mine")
    assert built.fingerprint() == again.fingerprint()
    assert built.responses["chosen"] == [e.chosen for e in examples]
    assert built.metadata["seed"] == 3 and built.metadata["generators"]["random_sentence"]["corpus"].startswith("fortunes")
    assert built.metadata["generators"]["chosen_rephrase_semantic"]["plugin"] == "ldreg.responses"
    with pytest.raises(PluginError, match=r"no response type named 'chosen_rephrase'.*installed: .*chosen_permuted"):
        build_probing_set(examples, ["chosen", "chosen_rephrase"], ctx)


def test_encode_probing_set_reports_truncation(tiny_model_dir, authors):
    from ldreg.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    small = ProbingSet("s", authors.examples[:30], {k: authors.responses[k][:30] for k in ("chosen", "random_permuted")})
    encoded = encode_probing_set(small, tok, TokenLimits(max_length=128, max_prompt_length=64))
    assert set(encoded) == {"chosen", "random_permuted"} and all(len(v) == 30 for v in encoded.values())
    assert encoded.report.pairs == 60
    assert encoded.report.truncated == sum(p.truncated for v in encoded.values() for p in v) > 0
    assert all(len(p) <= 128 for v in encoded.values() for p in v)
    assert encoded.reports_by_type["chosen"].pairs == 30
    roomy = encode_probing_set(small, tok, TokenLimits(max_length=100_000, max_prompt_length=50_000))
    assert roomy.report.truncated == 0
    first = roomy["chosen"][0]
    assert tok.decode(list(first.prompt_ids)) == small.examples[0].prompt
    assert first.response_ids[-1] == tok.eos_token_id


def test_mismatched_lengths_are_refused():
    ex = [PreferenceExample(0, "p", "c", "r")]
    with pytest.raises(DataError, match="has 2 responses for 1 examples"):
        ProbingSet("x", ex, {"chosen": ["a", "b"]})

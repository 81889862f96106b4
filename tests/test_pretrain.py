"""Pretraining a base model here: a micro preset, built in seconds, reused, deterministic, loadable."""

import json
from dataclasses import replace

import pytest
import torch

from ldreg.paper import pretrain
from ldreg.errors import SpecError
from ldreg.models import load_model, load_tokenizer

MICRO = replace(pretrain.PRESETS["fortunes-micro"], max_chars=60_000, steps=20)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("micro")
    return directory, pretrain.train(MICRO, directory)


def test_record_says_what_was_trained_and_loss_decreases(built):
    directory, record = built
    saved = json.loads((directory / pretrain.RECORD_FILE).read_text())
    assert saved == record
    assert record["steps"] == 20 and record["tokens_trained"] == 20 * MICRO.seq_len * MICRO.batch_size
    # a fresh model starts near log(vocab): uniform guessing; twenty steps already beat it
    assert abs(record["first_loss"] - torch.log(torch.tensor(float(MICRO.vocab_size))).item()) < 0.5
    assert record["final_loss"] < record["first_loss"] - 0.5


def test_loads_through_from_pretrained_and_speaks_english(built):
    directory, _ = built
    tokenizer, model = load_tokenizer(directory), load_model(directory)
    ids = tokenizer(" the man who", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert tokenizer.decode(ids[0]) == " the man who"


def test_same_preset_same_weights(built, tmp_path):
    directory, record = built
    again = pretrain.train(MICRO, tmp_path / "again")
    assert again["final_loss"] == record["final_loss"]
    a, b = load_model(directory).state_dict(), load_model(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_path_builds_once_then_reuses(monkeypatch, tmp_path):
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    monkeypatch.setitem(pretrain.PRESETS, "micro-test", replace(MICRO, steps=3))
    calls = []
    real = pretrain.train
    monkeypatch.setattr(pretrain, "train", lambda p, d, progress=False: calls.append(p) or real(p, d))
    first = pretrain.pretrained_path("micro-test", progress=False)
    assert pretrain.pretrained_path("micro-test", progress=False) == first
    assert len(calls) == 1 and (first / "config.json").exists()
    assert not list(first.parent.glob(".*building"))
    assert pretrain.read_record("micro-test")["steps"] == 3


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(SpecError, match="no pretrained preset 'nope'.*fortunes-small"):
        pretrain.pretrained_path("nope")

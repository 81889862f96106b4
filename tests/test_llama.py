"""The Llama architecture (SmolLM2's) beside GPT-NeoX: chat template, per-tokenizer EOS, a real run."""

from __future__ import annotations

import numpy as np
import pytest

from ldreg import spec as specs
from ldreg.backends import resolve_backend
from ldreg.data.chat import hh_messages
from ldreg.data.errors import DataError
from ldreg.dynamics.probes import probe
from ldreg.registry import load_plugins
from ldreg.runner import prepare, run_experiment


def _spec(architecture: str, chat: bool, **extra):
    data = {
        "name": f"tiny-{architecture}", "seed": 0,
        "model": {"base": "tiny", "tiny": {"architecture": architecture, "hidden_size": 32, "layers": 2,
                                           "heads": 4, "vocab_size": 400}},
        "data": {"source": "authors:helpful-base/train", "limit": 12, "test_fraction": 0.25,
                 "max_length": 256, "max_prompt_length": 160, "chat_template": chat},
        "probing": {"every": 8, "response_types": ["chosen", "rejected", "chosen_rephrase_semantic"],
                    "sets": [{"name": "train", "source": "authors:helpful-base/train", "n": 4}]},
        "stages": [{"loss": "sft", "epochs": 1, "lr": 1e-3, "optimizer": "adamw", "batch_size": 3},
                   {"loss": "dpo", "epochs": 0.5, "lr": 1e-3, "optimizer": "adamw", "batch_size": 3}],
        "checkpoint_every": 0,
    }
    data.update(extra)
    return specs.parse(data, load_plugins())


@pytest.fixture(scope="module")
def llama_chat():
    spec = _spec("llama", chat=True)
    return spec, prepare(spec, resolve_backend("cpu", load_plugins().backends), load_plugins())


def test_hh_dialogue_becomes_chat_messages():
    turns = hh_messages("\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: And 2+2?\n\nAssistant:")
    assert turns == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "And 2+2?"}]
    with pytest.raises(DataError, match="chat_template: false"):
        hh_messages("no turns here")


def test_chat_template_and_eos_follow_the_tokenizer(llama_chat):
    spec, run = llama_chat
    tok = run.tokenizer
    assert type(run.model).__name__ == "LlamaForCausalLM"
    first = next(e for e in run.train if not e.chosen.truncated)
    prompt = tok.decode(first.chosen.prompt_ids)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "\n\nHuman:" not in prompt
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert first.chosen.response_ids[-1] == end_of_turn == tok.eos_token_id
    for probed in run.probe_sets["train"].pairs_by_type["chosen_rephrase_semantic"]:
        assert tok.decode(probed.prompt_ids).endswith("<|im_start|>assistant\n")

    neox = prepare(_spec("gpt_neox", chat=False), resolve_backend("cpu", load_plugins().backends), load_plugins())
    plain = next(e for e in neox.train if not e.chosen.truncated)
    hh_prompt = neox.tokenizer.decode(plain.chosen.prompt_ids)
    assert hh_prompt.startswith("\n\nHuman:") and hh_prompt.endswith("\n\nAssistant:")
    assert plain.chosen.response_ids[-1] == neox.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_chat_template_refused_for_a_tokenizer_without_one():
    with pytest.raises(DataError, match="no chat template"):
        prepare(_spec("gpt_neox", chat=True), resolve_backend("cpu", load_plugins().backends), load_plugins())


def test_shared_prompt_probe_matches_per_type_on_llama(llama_chat):
    _, run = llama_chat
    ps = run.probe_sets["train"]
    pad = run.tokenizer.pad_token_id
    single = probe(run.model, ps.pairs_by_type, ps.example_ids, pad_id=pad, max_tokens_per_batch=600)
    shared = probe(run.model, ps.pairs_by_type, ps.example_ids, pad_id=pad, max_tokens_per_batch=600,
                   share_prompts=True)
    for rtype in ps.pairs_by_type:
        for quantity in ("logp_sum", "argmax_logp", "nonargmax", "g_norm"):
            np.testing.assert_allclose(shared[rtype][quantity], single[rtype][quantity], rtol=1e-4, atol=1e-4)


def test_sft_then_dpo_run_on_tiny_llama_stores_every_probe(mongo_server, mongo_client, monkeypatch):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "llama_test")
    db = mongo_client["llama_test"]
    spec = _spec("llama", chat=True)
    done = run_experiment(spec, progress=False, plugins=load_plugins())
    doc = db.runs.find_one({"_id": done.run_id})
    assert doc["status"] == "COMPLETED"
    assert doc["info"]["model_path"].rsplit("/", 1)[-1].startswith("tiny-")
    probes = list(db.observations.find({"run_id": done.run_id, "kind": "probe"}))
    types = {d["response_type"] for d in probes}
    assert types == {"chosen", "rejected", "chosen_rephrase_semantic"}
    stages = {d["stage_index"] for d in probes}
    assert stages == {0, 1}
    for d in probes:
        assert d["example_ids"] == [0, 1, 2, 3]  # the authors' first four training prompts
        assert all(np.isfinite(d["values"]["logp_sum"]))

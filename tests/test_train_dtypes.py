"""The trainer's precisions: the policy's forward under autocast at ``model.dtype`` (its weights stay
fp32), the frozen reference held at ``model.reference_dtype``, and plain fp32 by default on CPU.

Every forward of a causal LM is seen through torch's global module hook, so the policy and the
reference (a deep copy the trainer makes inside the stage) are observed as they really run.
"""

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ldreg import spec as specs
from ldreg.data.tokenize import TokenLimits, encode_preference
from ldreg.models import load_model, load_tokenizer
from ldreg.registry import load_plugins
from ldreg.runner import run_experiment
from ldreg.spec import StageSpec
from ldreg.train import EncodedExample, Trainer

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


@contextmanager
def forwards():
    """(role, weight dtype, autocast dtype or None, logits dtype) of each causal-LM forward."""
    seen: list[tuple[str, torch.dtype, torch.dtype | None, torch.dtype]] = []

    def hook(module, args, output):
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            return
        weight = next(module.parameters())
        role = "policy" if weight.requires_grad else "reference"
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen.append((role, weight.dtype, autocast, logits.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def setup(tiny_model_dir, authors_records):
    tok = load_tokenizer(tiny_model_dir)
    limits = TokenLimits(max_length=96, max_prompt_length=48)
    data = [EncodedExample(i, *encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], limits))
            for i, r in enumerate(authors_records[:4])]
    return tok, data, load_plugins()


def _dpo_step(tiny_model_dir, setup, **dtypes):
    """One DPO step (it needs a reference); returns the forwards seen and the trained model."""
    tok, data, plugins = setup
    model = load_model(tiny_model_dir)
    trainer = Trainer(model=model, backend=plugins.backends.get("cpu"), pad_id=tok.pad_token_id,
                      losses={"dpo": plugins.losses.get("dpo")}, progress=False, **dtypes)
    with forwards() as seen:
        trainer.run([StageSpec(loss="dpo", name="dpo", epochs=1, lr=1e-3, optimizer="sgd", batch_size=4)], data)
    return seen, model


def test_by_default_policy_and_reference_run_in_plain_fp32(tiny_model_dir, setup):
    seen, model = _dpo_step(tiny_model_dir, setup)
    assert {s for s in seen if s[0] == "policy"} == {("policy", torch.float32, None, torch.float32)}
    assert {s for s in seen if s[0] == "reference"} == {("reference", torch.float32, None, torch.float32)}


@pytest.mark.parametrize(("autocast", "reference"), [(torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16),
                                                    (torch.bfloat16, None), (None, torch.float16)],
                         ids=["bf16-fp16ref", "fp16-bf16ref", "bf16-policyref", "fp32-fp16ref"])
def test_autocast_dtype_reaches_the_forward_and_reference_dtype_the_reference(tiny_model_dir, setup, autocast,
                                                                               reference):
    for dtype in {autocast, reference} - {None}:
        try:
            with torch.autocast("cpu", dtype=dtype):
                torch.nn.Linear(2, 2)(torch.ones(1, 2))
        except RuntimeError as e:  # older torch: CPU autocast only in bf16
            pytest.skip(f"this torch has no CPU autocast in {dtype}: {e}")
    seen, model = _dpo_step(tiny_model_dir, setup, autocast_dtype=autocast, reference_dtype=reference)
    # the policy's weights stay fp32; its forward runs under autocast, so its logits come out in that dtype
    assert {s for s in seen if s[0] == "policy"} == {("policy", torch.float32, autocast, autocast or torch.float32)}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the reference's weights are cast, and it computes in that precision (else the policy's)
    held = reference or torch.float32
    computes = reference or autocast
    assert {s for s in seen if s[0] == "reference"} == {("reference", held, computes, computes or torch.float32)}


def test_a_runs_spec_dtypes_reach_its_policy_and_reference(mongo_url, monkeypatch):
    """Through the runner: ``model.dtype`` and ``model.reference_dtype`` of a spec, in a real run."""
    monkeypatch.setenv("LDREG_DB", "train_dtypes")
    plugins = load_plugins()
    spec = specs.load(SMOKE, ["name=dtypes", "stages.0.loss=dpo", "stages.0.epochs=0.25", "probing.every=100",
                              "probing.sets.0.n=2", "model.dtype=bfloat16", "model.reference_dtype=float16",
                              "probing.influence=null", "probing.entk=null"], plugins)
    with forwards() as seen:
        run_experiment(spec, progress=False, plugins=plugins)
    roles = {s[0] for s in seen}
    assert roles == {"policy", "reference"}
    assert {s for s in seen if s[0] == "policy"} == {("policy", torch.float32, torch.bfloat16, torch.bfloat16)}
    assert {s for s in seen if s[0] == "reference"} == {("reference", torch.float16, torch.float16, torch.float16)}

"""ldreg's callback inside TRL's trainers: a tiny model from config, a few real TRL steps, the real server.

What is checked: the observations the callback stores are exactly what ldreg's own probe engine
gives on the same weights (the trainer's initial model and its final checkpoint, saved and
reloaded), with LoRA adapters active too; the run is an ordinary ldreg run (COMPLETED, stages,
TRL's metrics), and an SFT -> DPO chain of two TRL trainers is one two-stage run that a shipped
figure's query draws.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

pytest.importorskip("trl", reason="needs the trl extra: pip install -e '.[trl]' (TRL, peft)")

from datasets import Dataset  # noqa: E402

from ldreg import testing  # noqa: E402
from ldreg.dynamics.probes import probe  # noqa: E402
from ldreg.models import load_model  # noqa: E402
from ldreg.store.collections import METRICS, OBSERVATIONS  # noqa: E402

PROBING = {"every": 4, "response_types": ["chosen", "rejected", "chosen_permuted"],
           "sets": [{"name": "train", "source": "train", "n": 4}]}
LIMITS = dict(max_length=64, max_prompt_length=32)


@pytest.fixture
def run_db(mongo_url, mongo_client, monkeypatch):
    name = f"trl_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("LDREG_DB", name)
    yield mongo_client[name]
    mongo_client.drop_database(name)


@pytest.fixture(scope="module")
def rows():
    return [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in testing.examples(8)]


def _args(cls, tmp_path, **extra):
    return cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
               report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True,
               max_length=LIMITS["max_length"], **extra)


def _stored(db, run_id, stage_index, step):
    docs = db[OBSERVATIONS].find({"run_id": run_id, "kind": "probe", "stage_index": stage_index, "step": step})
    return {d["response_type"]: d for d in docs}


def _assert_same(stored, model, callback):
    """The stored values of one probe pass equal ldreg's probe of ``model`` on the same probing set."""
    ps = callback.probe_sets["train"]
    own = probe(model, ps.pairs_by_type, ps.example_ids, pad_id=callback.pad_id, share_prompts=True)
    assert set(stored) == set(own)
    for rtype, values in own.items():
        assert stored[rtype]["example_ids"] == ps.example_ids
        for quantity, expected in values.items():
            np.testing.assert_array_equal(np.array(stored[rtype]["values"][quantity]), expected,
                                          err_msg=f"{rtype} {quantity}")


def test_dpo_trainer_observations_equal_ldregs_probe_of_the_same_checkpoint(run_db, rows, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from ldreg.integrations.trl import LdregCallback

    tiny = testing.tiny_model()
    callback = LdregCallback(rows, probing=PROBING, name="trl-dpo", **LIMITS)
    trainer = DPOTrainer(model=tiny.model, args=_args(DPOConfig, tmp_path), train_dataset=Dataset.from_list(rows),
                         processing_class=tiny.tokenizer, callbacks=[callback])
    trainer.train()

    run_id = callback.run.run_id
    doc = run_db["runs"].find_one({"_id": run_id})
    assert doc["status"] == "COMPLETED"
    assert doc["config"]["stages"][0]["loss"] == "dpo" and doc["config"]["source"] == "trl"
    assert doc["result"]["steps"] == 2 and doc["result"]["examples_seen"] == 8
    metric_names = {m["name"] for m in run_db[METRICS].find({"run_id": run_id})}
    assert {"loss", "rewards/chosen", "logps/rejected"} <= metric_names  # TRL's own logged metrics
    steps = sorted({d["step"] for d in run_db[OBSERVATIONS].find({"run_id": run_id})})
    assert steps == [0, 1, 2]  # every 4 examples, 4 per step

    _assert_same(_stored(run_db, run_id, 0, 0), load_model(tiny.path), callback)  # before training
    trainer.save_model(str(tmp_path / "final"))
    final = load_model(tmp_path / "final")
    _assert_same(_stored(run_db, run_id, 0, 2), final, callback)
    start, end = _stored(run_db, run_id, 0, 0), _stored(run_db, run_id, 0, 2)
    assert start["chosen"]["values"]["logp_sum"] != end["chosen"]["values"]["logp_sum"]  # training moved it


def test_lora_adapter_is_active_in_the_probes(run_db, rows, tmp_path):
    from peft import LoraConfig, PeftModel
    from trl import DPOConfig, DPOTrainer

    from ldreg.integrations.trl import LdregCallback

    tiny = testing.tiny_model()
    extras = {"influence": {"every": 0, "n": 2}, "entk": {"every": 0, "n": 3}}  # before training, as in a spec
    callback = LdregCallback(rows, probing={**PROBING, **extras}, name="trl-lora", **LIMITS)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_4h_to_h"], lora_dropout=0.0)
    trainer = DPOTrainer(model=tiny.model, args=_args(DPOConfig, tmp_path), train_dataset=Dataset.from_list(rows),
                         processing_class=tiny.tokenizer, callbacks=[callback], peft_config=lora)
    trainer.train()

    run_id = callback.run.run_id
    doc = run_db["runs"].find_one({"_id": run_id})
    assert doc["status"] == "COMPLETED" and doc["config"]["model"]["adapter"]["active"] == ["default"]
    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    adapted = PeftModel.from_pretrained(load_model(tiny.path), str(tmp_path / "adapter"))
    _assert_same(_stored(run_db, run_id, 0, 2), adapted, callback)
    base_only = _stored(run_db, run_id, 0, 0)  # LoRA starts as the identity: the base model's values
    _assert_same(base_only, load_model(tiny.path), callback)
    assert base_only["chosen"]["values"]["logp_sum"] != _stored(run_db, run_id, 0, 2)["chosen"]["values"]["logp_sum"]
    kinds = {(d["kind"], d["step"]) for d in run_db[OBSERVATIONS].find({"run_id": run_id, "kind": {"$ne": "probe"}})}
    assert kinds == {("influence", 0), ("entk", 0)}  # eNTK/influence of the trainable (adapter) parameters


def test_sft_then_dpo_through_trl_is_one_two_stage_run_the_figures_draw(run_db, rows, tmp_path):
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ldreg.integrations.trl import LdregCallback
    from ldreg.query.execute import run_query

    tiny = testing.tiny_model()
    callback = LdregCallback(rows, probing=PROBING, name="trl-sft-dpo", stages=["sft", "dpo"], **LIMITS)
    sft_rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    SFTTrainer(model=tiny.model, args=_args(SFTConfig, tmp_path), train_dataset=Dataset.from_list(sft_rows),
               processing_class=tiny.tokenizer, callbacks=[callback]).train()
    assert callback.result is None  # one trainer of two: the run stays open
    DPOTrainer(model=tiny.model, args=_args(DPOConfig, tmp_path), train_dataset=Dataset.from_list(rows),
               processing_class=tiny.tokenizer, callbacks=[callback]).train()

    run_id = callback.run.run_id
    doc = run_db["runs"].find_one({"_id": run_id})
    assert doc["status"] == "COMPLETED" and [s["loss"] for s in doc["config"]["stages"]] == ["sft", "dpo"]
    points = sorted({(d["stage_index"], d["step"]) for d in run_db[OBSERVATIONS].find({"run_id": run_id})})
    assert points == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (1, 4)]  # steps count across stages
    out = run_query("queries/dpo-squeeze.yaml", tmp_path / "squeeze.csv", [f"runs={run_id}"])
    frame = out.read_text()
    assert f"{run_id}" in frame and "chosen" in frame


def test_a_trainer_that_raises_leaves_a_failed_run_with_every_probe_stored(run_db, rows, tmp_path):
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ldreg.integrations.trl import LdregCallback

    class CrashAtStep1(TrainerCallback):  # a fault in the user's training loop, after ldreg probed step 1
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise RuntimeError("user code failed at step 1")

    tiny = testing.tiny_model()
    callback = LdregCallback(rows, probing=PROBING, name="trl-crash", **LIMITS)
    sft_rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    trainer = SFTTrainer(model=tiny.model, args=_args(SFTConfig, tmp_path), train_dataset=Dataset.from_list(sft_rows),
                         processing_class=tiny.tokenizer, callbacks=[callback, CrashAtStep1()])
    with pytest.raises(RuntimeError, match="user code failed"):
        trainer.train()
    callback.abandon()  # what the exit handler does when nobody calls it

    doc = run_db["runs"].find_one({"_id": callback.run.run_id})
    assert doc["status"] == "FAILED" and "observations probed until then are stored" in doc["fail_trace"][-1]
    stored = run_db[OBSERVATIONS].find({"run_id": callback.run.run_id})
    assert sorted({d["step"] for d in stored}) == [0, 1]


def test_bad_input_names_the_row_or_field(rows):
    from ldreg.errors import LdregError
    from ldreg.integrations.trl import LdregCallback

    with pytest.raises(LdregError, match=r"examples row 1: no chosen field"):
        LdregCallback([rows[0], {"prompt": "hi"}])
    with pytest.raises(LdregError, match=r"probing\.every"):
        LdregCallback(rows, probing={**PROBING, "every": 0})
    with pytest.raises(LdregError, match=r"probing.sets\[held\]: source test needs rows: pass test_examples"):
        LdregCallback(rows, probing={**PROBING, "sets": [{"name": "held", "source": "test", "n": 2}]})
    with pytest.raises(LdregError, match=r"probing\.ches: not run by the TRL callback"):
        LdregCallback(rows, probing={**PROBING, "ches": {}})


def test_only_the_main_process_probes_and_records(rows, tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ldreg.integrations.trl import LdregCallback

    callback = LdregCallback(rows, probing=PROBING)
    state = TrainerState(is_world_process_zero=False)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback.on_train_begin(args, state, TrainerControl(), model=None, processing_class=None)
    callback.on_step_end(args, state, TrainerControl(), model=None)
    assert callback.run is None and callback.passes == 0


def test_the_core_never_imports_trl_or_peft():
    """Only ldreg/integrations may import them (an extra); every other module is parsed for imports."""
    import ast
    from pathlib import Path

    import ldreg

    root = Path(ldreg.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "integrations" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in ("trl", "peft")]
    assert not offenders

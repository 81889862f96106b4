"""Unpaired preference data (TRL's prompt/completion/label rows): read, trained on by KTO and BCO, probed.

Also BCO's running mean as loss state: a run crashed and resumed equals one never interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ldreg import spec as specs
from ldreg.data.adapters import load_preferences
from ldreg.data.errors import DataError
from ldreg.data.tokenize import TokenLimits, encode_with_limits
from ldreg.data.unpaired import probe_pairs
from ldreg.dynamics.logprobs import EncodedPair, collate, model_sequence_logps
from ldreg.errors import SpecError
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition
from ldreg.registry import load_plugins
from ldreg.spec import StageSpec
from ldreg.train import EncodedExample, Trainer

from faultkit import Crash, assert_same_observations

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def unpair(path: Path, pairs: list[dict]) -> Path:
    """TRL's maybe_unpair_preference_dataset: each pair becomes a desirable and an undesirable row."""
    with path.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p["prompt"], "completion": p["chosen"], "label": True}) + "\n")
            f.write(json.dumps({"prompt": p["prompt"], "completion": p["rejected"], "label": False}) + "\n")
    return path


@pytest.fixture(scope="module")
def smoke_pairs() -> list[dict]:
    with open(ROOT / "experiments" / "data" / "smoke.jsonl") as f:
        return [json.loads(line) for line in f]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the adapter -----------------------------------------------------------------------------------


def test_unpaired_rows_are_read_with_their_labels(tmp_path, smoke_pairs):
    examples = load_preferences(unpair(tmp_path / "u.jsonl", smoke_pairs[:3]))  # format auto-detected
    assert [e.extras["label"] for e in examples] == [True, False] * 3
    assert examples[1].chosen == smoke_pairs[0]["rejected"] and examples[1].rejected == ""
    assert load_preferences(tmp_path / "u.jsonl", format="unpaired")[4].prompt == smoke_pairs[2]["prompt"]


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c"}],
     "row 1 (line 2): missing field 'label' (format 'unpaired' needs prompt, completion, label"),
    ([{"prompt": "p", "completion": "c", "label": "yes"}],
     "row 0 (line 1): field 'label' must be true (desirable) or false (undesirable), got str 'yes'"),
    ([{"prompt": "p", "completion": "c", "label": 1}], "field 'label' must be true (desirable) or false"),
    ([{"prompt": "p", "completion": "  ", "label": False}], "row 0 (line 1): field 'completion' is empty"),
    ([{"prompt": "p", "completion": None, "label": False}], "field 'completion' is null"),
    ([{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "chosen": "a", "rejected": "b"}],
     "row 1 (line 2): mixes unpaired rows (prompt/completion/label) with pairs"),
])
def test_bad_unpaired_rows_get_one_message_naming_file_row_and_field(tmp_path, rows, message):
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


def test_bad_unpaired_row_at_dry_run_is_one_line(tmp_path):
    from click.testing import CliRunner

    from ldreg.cli import main

    path = write(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": "no"}])
    out = CliRunner().invoke(main, ["run", str(SMOKE), "--dry-run", "with", f"data.source={path}", "stages.0.loss=kto"])
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert "field 'label' must be true (desirable) or false (undesirable)" in out.output, out.output


def test_a_good_unpaired_file_passes_dry_run_with_its_format_named(tmp_path, smoke_pairs):
    from click.testing import CliRunner

    from ldreg.cli import main

    path = unpair(tmp_path / "u.jsonl", smoke_pairs[:4])
    out = CliRunner().invoke(main, ["run", str(SMOKE), "--dry-run", "with", f"data.source={path}",
                                    "data.format=unpaired", "stages.0.loss=bco"])
    assert out.exit_code == 0, out.output


def test_probes_of_unpaired_data_are_the_pairs_it_holds(tmp_path, smoke_pairs):
    examples = load_preferences(unpair(tmp_path / "u.jsonl", smoke_pairs[:4]))
    lone = examples[:2] + examples[3:4] + examples[4:]  # prompt 1 keeps only its undesirable row
    pairs = probe_pairs(lone)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        (0, smoke_pairs[0]["chosen"], smoke_pairs[0]["rejected"]),
        (4, smoke_pairs[2]["chosen"], smoke_pairs[2]["rejected"]),
        (6, smoke_pairs[3]["chosen"], smoke_pairs[3]["rejected"])]
    with pytest.raises(DataError, match="the test split of this unpaired data has no prompt with both"):
        probe_pairs(examples[1:2], "test")
    assert probe_pairs(examples[1:2], "test", required=False) == []


def test_a_pair_loss_on_unpaired_data_is_refused_before_any_model_is_built(tmp_path, smoke_pairs):
    from ldreg.runner import prepare

    plugins = load_plugins()
    path = unpair(tmp_path / "u.jsonl", smoke_pairs[:4])
    spec = specs.load(SMOKE, [f"data.source={path}", "stages.0.loss=dpo"], plugins)
    with pytest.raises(SpecError, match=r"stages\[0\].loss: 'dpo' needs \(y\+, y-\) pairs, but data.source .* is "
                                        r"unpaired .*; use bco or kto, or paired data"):
        prepare(spec, plugins.backends.get("cpu"), plugins)
    from click.testing import CliRunner

    from ldreg.cli import main

    out = CliRunner().invoke(main, ["run", str(SMOKE), "--dry-run", "with", f"data.source={path}"])  # loss sft
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert "stages[0].loss: 'sft' needs (y+, y-) pairs" in out.output, out.output


# ---- the engine: mismatched pairs and a real step ----------------------------------------------------


def _unpaired_batch(tok, records, n=4):
    limits = TokenLimits(max_length=96, max_prompt_length=48)
    data = []
    for i, r in enumerate(records[:n]):
        (pair,) = encode_with_limits(tok, r["prompt"], [r["chosen"] if i % 2 == 0 else r["rejected"]], limits)
        data.append(EncodedExample(i, pair, None, desirable=i % 2 == 0))
    return data


class Spy:
    """A KTO that records what the engine handed it, so the mismatched pairs can be checked."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def ldreg_register_losses(self, registry):
        kto = load_plugins().losses.get("kto")

        def compute(logps, **hparams):
            self.seen.append(logps)
            return kto.compute(logps, **hparams)

        registry.add(LossDefinition(name="spy_kto", compute=compute, description="KTO, recorded", defaults=kto.defaults,
                                    needs_rejected=True, needs_reference=True, accepts_unpaired=True,
                                    needs_mismatched=kto.needs_mismatched))


def test_mismatched_pairs_are_trls_shift_of_the_batch(tiny_model_dir, authors_records):
    """Prompt i with the completion of i-1 (TRL's _get_kl_dataset), scored by the policy and the reference."""
    from ldreg.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    data = _unpaired_batch(tok, authors_records)
    spy = Spy()
    plugins = load_plugins([spy])
    model = load_model(tiny_model_dir)
    before = load_model(tiny_model_dir)
    trainer = Trainer(model=model, backend=plugins.backends.get("cpu"), pad_id=tok.pad_token_id,
                      losses={"spy_kto": plugins.losses.get("spy_kto")}, progress=False, seed=3)
    trainer.run([StageSpec(loss="spy_kto", name="kto", epochs=1, lr=1e-3, batch_size=4)], data)
    (seen,) = spy.seen
    order = [int(i) for i in seen.desirable.tolist()]  # the shuffled batch: labels follow the examples
    ids = trainer._order(4, 1, 0)
    assert order == [data[i].desirable for i in ids]
    pairs = [data[i].chosen for i in ids]
    shifted = [EncodedPair(p.prompt_ids, q.response_ids[: max(1, max(map(len, pairs)) - len(p.prompt_ids))])
               for p, q in zip(pairs, [pairs[-1], *pairs[:-1]])]
    with torch.no_grad():
        expected, _ = model_sequence_logps(before, collate(shifted, tok.pad_token_id))
    torch.testing.assert_close(seen.mismatched, expected, rtol=1e-5, atol=1e-5)  # the policy before its step
    torch.testing.assert_close(seen.ref_mismatched, expected, rtol=1e-5, atol=1e-5)  # the reference: the same model
    assert seen.rejected is None and seen.chosen.shape == (4,)


@pytest.mark.parametrize("name,params", [("kto", {}), ("kto", {"kl": "batch"}), ("bco", {})])
def test_a_real_step_on_unpaired_data(tiny_model_dir, authors_records, name, params):
    from ldreg.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plugins = load_plugins()
    scalars: dict[str, list[float]] = {}
    model = load_model(tiny_model_dir)
    start = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model=model, backend=plugins.backends.get("cpu"), pad_id=tok.pad_token_id,
                      losses={name: plugins.losses.get(name)}, progress=False,
                      log_scalar=lambda n, v, s: scalars.setdefault(n, []).append(v))
    trainer.run([StageSpec(loss=name, name="u", epochs=1, lr=1e-3, batch_size=3, params=params)],
                _unpaired_batch(tok, authors_records, n=6))
    assert len(scalars["loss"]) == 2
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "residual/g_norm"} <= set(scalars)
    assert all(math.isfinite(v) for values in scalars.values() for v in values)
    assert ("kl" if name == "kto" else "delta") in scalars
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters()))  # it trained


# ---- BCO's running mean is loss state: resume equals uninterrupted -------------------------------------


class CrashingBCO:
    """BCO under the name ``crashy_bco`` that raises Crash on its ``crash_on``-th call (None: never)."""

    def __init__(self, crash_on: int | None):
        self.calls, self.crash_on = 0, crash_on

    @hookimpl
    def ldreg_register_losses(self, registry):
        bco = load_plugins().losses.get("bco")

        def compute(logps, beta, state):
            self.calls += 1
            if self.calls == self.crash_on:
                raise Crash(f"simulated crash at call {self.calls}")
            return bco.compute(logps, beta=beta, state=state)

        registry.add(LossDefinition(name="crashy_bco", compute=compute, description="BCO that crashes",
                                    defaults=bco.defaults, needs_rejected=True, needs_reference=True,
                                    accepts_unpaired=True, new_state=bco.new_state))


def test_bco_resumed_equals_uninterrupted(mongo_server, mongo_client, monkeypatch, tmp_path, smoke_pairs):
    from ldreg.runner import resume_experiment, run_experiment

    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "unpaired_resume")
    db = mongo_client["unpaired_resume"]
    data = unpair(tmp_path / "u.jsonl", smoke_pairs)

    def spec(plugins):
        return specs.load(SMOKE, [f"data.source={data}", "stages.0.loss=crashy_bco", "stages.0.epochs=1",
                                  "stages.0.lr=1e-2", "checkpoint_every=2", "probing.every=8",
                                  "name=bco-resume"], plugins)

    clean = load_plugins([CrashingBCO(None)])
    full = run_experiment(spec(clean), progress=False, plugins=clean)
    crashing = load_plugins([CrashingBCO(crash_on=4)])
    with pytest.raises(Exception, match="simulated crash"):
        run_experiment(spec(crashing), progress=False, plugins=crashing)
    crashed = db.runs.find_one({"experiment.name": "bco-resume"}, sort=[("_id", -1)])["_id"]
    assert crashed != full.run_id
    resume_experiment(crashed, progress=False, plugins=clean)
    assert db.runs.find_one({"_id": crashed})["info"]["resumed_at_steps"] == [2]
    assert_same_observations(db, full.run_id, db, crashed)  # probes of the unpaired run's pairs included
    delta = {run: db.metrics.find_one({"run_id": run, "name": "delta"}) for run in (full.run_id, crashed)}
    assert delta[crashed]["steps"] == delta[full.run_id]["steps"] and len(delta[crashed]["steps"]) >= 4
    assert delta[crashed]["values"] == pytest.approx(delta[full.run_id]["values"], rel=1e-9, abs=1e-12)
    # the running mean moved: a state restarted at the resume would give other deltas after step 2
    assert len(set(delta[crashed]["values"])) == len(delta[crashed]["values"])

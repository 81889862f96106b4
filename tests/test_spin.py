"""SPIN end to end: y- sampled from the opponent, seeded by the step, so a resumed run equals an unbroken one."""

from pathlib import Path

import pytest
import torch

from ldreg import spec as specs
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition
from ldreg.registry import load_plugins
from ldreg.runner import resume_experiment, run_experiment

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
DB = "spin_test"


class CrashingSPIN:
    """A test plugin: SPIN (generated y-, the stage-start opponent) that raises on its Nth call while armed."""

    def __init__(self, crash_on: int | None):
        self.calls, self.crash_on = 0, crash_on

    @hookimpl
    def ldreg_register_losses(self, registry):
        spin = load_plugins().losses.get("spin")

        def compute(logps, beta):
            self.calls += 1
            if self.calls == self.crash_on:
                raise RuntimeError(f"simulated crash at call {self.calls}")
            return spin.compute(logps, beta)

        registry.add(LossDefinition(name="crashy_spin", compute=compute, description="SPIN that crashes",
                                    defaults=dict(spin.defaults), needs_rejected=True, needs_reference=True,
                                    rejected_source="generated"))


def _spec(plugins, loss: str, name: str):
    return specs.load(SMOKE, [f"stages.0.loss={loss}", "stages.0.epochs=1", "checkpoint_every=2", "probing.every=8",
                              "probing.sets.0.n=4", "probing.influence.n=2", "probing.entk.n=2", f"name={name}"],
                      plugins)


def _stored(db, run_id):
    docs = db.observations.find({"run_id": run_id})
    return {(d["kind"], d["stage_index"], d["step"], d["probe_set"], d["response_type"], d.get("update_type")):
            d["values"] for d in docs}


@pytest.fixture(scope="module")
def spin_run(mongo_server, mongo_client):
    """One uninterrupted SPIN run through the runner into the real store (the reference for resume)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDREG_MONGO_URL", mongo_server.url)
        mp.setenv("LDREG_DB", DB)
        plugins = load_plugins()
        result = run_experiment(_spec(plugins, "spin", "spin-e2e"), progress=False, plugins=plugins)
    yield mongo_client[DB], result
    mongo_client.drop_database(DB)


def test_spin_runs_end_to_end_into_the_store(spin_run):
    db, result = spin_run
    doc = db.runs.find_one({"_id": result.run_id})
    assert doc["status"] == "COMPLETED" and doc["config"]["stages"][0]["loss"] == "spin"
    assert result.result["steps"] == 5  # 18 training pairs / batch 4, one epoch
    loss = db.metrics.find_one({"run_id": result.run_id, "name": "loss"})
    assert loss["steps"] == [1, 2, 3, 4, 5] and all(v == v for v in loss["values"])
    # y- is the opponent's sample, not the data's y-, nor y+
    chosen, rejected = (db.metrics.find_one({"run_id": result.run_id, "name": f"logps/{w}"})["values"]
                        for w in ("chosen", "rejected"))
    assert all(abs(c - r) > 1e-6 for c, r in zip(chosen, rejected))
    kinds = {k[0] for k in _stored(db, result.run_id)}
    assert {"probe", "influence", "entk"} <= kinds


def test_resumed_spin_run_equals_uninterrupted(spin_run, mongo_server, monkeypatch):
    db, full = spin_run
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", DB)
    crashing = load_plugins([CrashingSPIN(crash_on=4)])
    with pytest.raises(Exception, match="simulated crash"):
        run_experiment(_spec(crashing, "crashy_spin", "spin-resume"), progress=False, plugins=crashing)
    crashed = db.runs.find_one({"experiment.name": "spin-resume"}, sort=[("_id", -1)])["_id"]
    assert db.runs.find_one({"_id": crashed})["status"] == "FAILED"

    clean = load_plugins([CrashingSPIN(None)])
    resume_experiment(crashed, progress=False, plugins=clean)
    doc = db.runs.find_one({"_id": crashed})
    assert doc["status"] == "COMPLETED" and doc["info"]["resumed_at_steps"] == [2]

    after, expected = _stored(db, crashed), _stored(db, full.run_id)
    assert after.keys() == expected.keys()
    for key in expected:
        for quantity, values in expected[key].items():
            assert after[key][quantity] == pytest.approx(values, rel=1e-5, abs=1e-6), (key, quantity)
    for name in ("loss", "rewards/margins", "logps/rejected"):
        want = db.metrics.find_one({"run_id": full.run_id, "name": name})
        got = db.metrics.find_one({"run_id": crashed, "name": name})
        assert got["steps"] == want["steps"] == [1, 2, 3, 4, 5], name
        assert got["values"] == pytest.approx(want["values"], rel=1e-5, abs=1e-6), name


def test_spin_samples_depend_only_on_seed_and_step(tiny_model_dir, english_texts):
    """The sampler is a pure function of (seed, step, example): no counter to checkpoint, RNG untouched."""
    from ldreg.dynamics.logprobs import EncodedPair
    from ldreg.models import load_model, load_tokenizer
    from ldreg.sampling import ResponseSampler
    from ldreg.train import EncodedExample

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    ids = [tok(t, add_special_tokens=False)["input_ids"][:12] for t in english_texts[:3]]
    examples = [EncodedExample(i, EncodedPair(tuple(x[:6]), tuple(x[6:])), EncodedPair(tuple(x[:6]), tuple(x[6:])))
                for i, x in enumerate(ids)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = ResponseSampler(tok, seed=3)(model, examples, 7)
    assert torch.equal(torch.get_rng_state(), state)  # the training run's RNG is not disturbed
    assert ResponseSampler(tok, seed=3)(model, examples, 7) == first  # a fresh sampler: the same draws
    assert ResponseSampler(tok, seed=3)(model, examples, 8) != first  # another step: other draws
    assert ResponseSampler(tok, seed=4)(model, examples, 7) != first  # another seed: other draws
    for pair, example in zip(first, examples):
        assert pair.prompt_ids == example.chosen.prompt_ids
        assert pair.response_ids[-1] == tok.eos_token_id
        assert len(pair.response_ids) <= len(example.chosen.response_ids) + 1

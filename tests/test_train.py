"""The trainer on a tiny real model: stages, probes on schedule, determinism, NaN guard."""

import copy

import pytest
import torch

from ldreg.data.tokenize import TokenLimits, encode_preference
from ldreg.losses import LossDefinition, LossOutput
from ldreg.models import load_model, load_tokenizer
from ldreg.observations import ListSink
from ldreg.registry import load_plugins
from ldreg.spec import StageSpec
from ldreg.train import EncodedExample, NonFiniteLoss, Trainer


@pytest.fixture(scope="module")
def setup(tiny_model_dir, authors_records):
    tok = load_tokenizer(tiny_model_dir)
    limits = TokenLimits(max_length=128, max_prompt_length=64)
    data = []
    for i, r in enumerate(authors_records[:8]):
        chosen, rejected = encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], limits)
        data.append(EncodedExample(i, chosen, rejected))
    return tok, data, load_plugins()


def _trainer(tiny_model_dir, setup, **kw):
    tok, data, plugins = setup
    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    backend = plugins.backends.get("cpu")
    calls = []
    trainer = Trainer(model=model, backend=backend, pad_id=tok.pad_token_id,
                      losses={n: plugins.losses.get(n) for n in plugins.losses.names()},
                      observer=lambda m, clock: calls.append((clock.step, clock.examples_seen, clock.stage)),
                      progress=False, **kw)
    return trainer, calls, data


def _margin(model, data, pad_id):
    from ldreg.dynamics.logprobs import collate, sequence_logps

    with torch.no_grad():
        b = collate([d.chosen for d in data] + [d.rejected for d in data], pad_id)
        lp, _ = sequence_logps(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)
    n = len(data)
    return float((lp[:n] - lp[n:]).mean()), lp


def test_dpo_step_raises_the_margin(tiny_model_dir, setup):
    trainer, _, data = _trainer(tiny_model_dir, setup)
    before, _ = _margin(trainer.model, data, setup[0].pad_token_id)
    stage = StageSpec(loss="dpo", name="dpo", epochs=1, lr=1e-3, optimizer="sgd", batch_size=8,
                      params={"beta": 0.1})
    trainer.run([stage], data)
    after, _ = _margin(trainer.model, data, setup[0].pad_token_id)
    assert after > before


def test_stages_and_probe_schedule(tiny_model_dir, setup):
    scalars = []
    sink = ListSink()
    trainer, calls, data = _trainer(tiny_model_dir, setup, probe_every=4, sink=sink,
                                    log_scalar=lambda n, v, s: scalars.append((n, v, s)))
    stages = [StageSpec(loss="sft", name="sft", epochs=1, lr=1e-3, batch_size=2, optimizer="adamw"),
              StageSpec(loss="dpo", name="dpo", epochs=0.5, lr=1e-4, batch_size=2)]
    clock = trainer.run(stages, data)
    assert clock.step == 4 + 2 and clock.examples_seen == 12
    # start of each stage, every 4 examples, and the end; a stage ending on the schedule probes its last
    # step once (it used to be probed, emitted and counted twice)
    assert calls == [(0, 0, "sft"), (2, 4, "sft"), (4, 8, "sft"), (4, 8, "dpo"), (6, 12, "dpo")]
    names = {n for n, _, _ in scalars}
    assert {"loss", "grad_norm", "lr", "stage_index", "logps/chosen", "rewards/margins", "residual/g_norm"} <= names
    batch_obs = [o for o in sink.observations if o.kind == "batch"]
    assert len(batch_obs) == 6 and all(v > 0 for o in batch_obs for v in o.values["G/token_norm"])
    assert "G/rejected_token_norm" in batch_obs[-1].values and "G/rejected_norm" not in batch_obs[0].values
    # SFT: G = pi - e_y per token, so the per-example mean token norm lies in (0, sqrt(2))
    assert all(0 < v < 2 ** 0.5 for v in batch_obs[0].values["G/token_norm"])


def test_same_seed_same_run(tiny_model_dir, setup):
    stage = StageSpec(loss="sft", epochs=1, lr=1e-3, batch_size=4, optimizer="adamw")
    a, _, data = _trainer(tiny_model_dir, setup, seed=3)
    a.run([stage], data)
    b, _, _ = _trainer(tiny_model_dir, setup, seed=3)
    b.run([stage], data)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_non_finite_loss_stops_with_step(tiny_model_dir, setup):
    nan_loss = LossDefinition(name="nan", description="always NaN",
                              compute=lambda lp: LossOutput(lp.chosen.sum() * float("nan")))
    trainer, _, data = _trainer(tiny_model_dir, setup)
    trainer.losses["nan"] = nan_loss
    with pytest.raises(NonFiniteLoss, match=r"stage 'x', step 1: loss is nan"):
        trainer.run([StageSpec(loss="nan", name="x")], data)


def test_resume_from_checkpoint_equals_uninterrupted(tiny_model_dir, setup):
    """Crash mid-stage, resume from the last checkpoint: same weights and same probes as no crash."""
    stages = [StageSpec(loss="sft", name="sft", epochs=1, lr=1e-3, batch_size=2, optimizer="adamw"),
              StageSpec(loss="dpo", name="dpo", epochs=1, lr=1e-4, batch_size=2)]
    full, full_calls, data = _trainer(tiny_model_dir, setup, seed=1, probe_every=4)
    full.run(stages, data)

    saved = []

    class Crash(Exception):
        pass

    def log(name, value, step):
        if step == 7 and name == "loss":
            raise Crash()

    crashed, crashed_calls, _ = _trainer(tiny_model_dir, setup, seed=1, probe_every=4, checkpoint_every=3,
                                         checkpointer=lambda s: saved.append(copy.deepcopy(s)), log_scalar=log)
    with pytest.raises(Crash):
        crashed.run(stages, data)
    last = saved[-1]
    assert last["clock"]["step"] == 6 and last["stage_index"] == 1 and last["batch"] == 2

    resumed, resumed_calls, _ = _trainer(tiny_model_dir, setup, seed=1, probe_every=4)
    resumed.run(stages, data, resume=last)
    for pa, pb in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb)
    # the probes after the checkpoint are those of the uninterrupted run
    assert resumed_calls == [c for c in full_calls if c[0] > 6 or (c[0] == 6 and c[2] == "dpo" and c[1] > 12)]


def test_reference_loaded_from_a_path(tiny_model_dir, setup):
    """A reference given by path is that model, frozen: here the untrained one, as at stage start."""
    trainer, _, data = _trainer(tiny_model_dir, setup)
    stage = StageSpec(loss="dpo", name="dpo", epochs=1, lr=1e-3, optimizer="sgd", batch_size=8,
                      reference=str(tiny_model_dir))
    ref = trainer._reference(stage)
    assert not any(p.requires_grad for p in ref.parameters())
    for a, b in zip(ref.parameters(), load_model(tiny_model_dir).parameters()):
        assert torch.equal(a, b)

"""Likelihood displacement, its alarms and CHES: known answers on hand-made numbers, then one tiny
tracked run against the real store whose loss pushes y+ down and y- down three times harder (so most
probe examples are displaced) and whose alarm must fire once and be stored as an event."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ldreg import spec as specs
from ldreg.dynamics.ches import ches, ches_from_hidden
from ldreg.dynamics.displacement import Alarms, DisplacementTracker, displacement_values, summary
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.errors import SpecError
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition, LossOutput
from ldreg.registry import load_plugins

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def _result(chosen, rejected, argmax):
    return {"chosen": {"logp_sum": np.array(chosen, float), "argmax_logp": np.array(argmax, float)},
            "rejected": {"logp_sum": np.array(rejected, float), "argmax_logp": np.zeros(len(chosen))}}


def test_flags_on_a_hand_made_series():
    start = {"chosen": [-10, -10, -10, -10], "rejected": [-20, -20, -20, -20], "argmax": [-5, -5, -5, -5]}
    now = {"chosen": [-11, -11, -9, -12], "rejected": [-25, -10, -30, -11], "argmax": [-4, -6, -4, -4]}
    v = displacement_values({k: np.array(x, float) for k, x in start.items()},
                            {k: np.array(x, float) for k, x in now.items()})
    # example 0: y+ -1, margin +4 -> displaced, squeezed; 1: y+ -1, margin -11 -> neither (y- rose);
    # 2: y+ rose -> neither; 3: y+ -2, y- +9 -> margin -11, not displaced, not squeezed
    assert v["d_chosen"].tolist() == [-1, -1, 1, -2]
    assert v["d_margin"].tolist() == [4, -11, 11, -11]
    assert v["displaced"].tolist() == [1, 0, 0, 0]
    assert v["squeezed"].tolist() == [1, 0, 0, 0]
    s = summary(v)
    assert s["displaced_share"] == 0.25 and s["n"] == 4
    assert not s["squeeze_signature"]  # mean y- rose (-5 + 10 - 10 + 9 = +4)


def test_tracker_baselines_each_stage_start_and_alarm_fires_once():
    tracker, alarms = DisplacementTracker(), Alarms(displacement_share=0.5, squeeze=True)
    ids = [7, 8]
    series = [  # (stage_index, chosen, rejected, argmax)
        (0, [-10, -10], [-20, -20], [-5, -5]),  # stage start: the baseline
        (0, [-11, -9], [-22, -19], [-4, -5]),  # one of two displaced: share 0.5 fires; means: y+ 0
        (0, [-12, -12], [-30, -30], [-3, -3]),  # both displaced, squeeze signature fires; share alarm not again
        (0, [-13, -13], [-40, -40], [-2, -2]),  # nothing new
        (1, [-13, -13], [-40, -40], [-2, -2]),  # a new stage: new baseline, zero displacement
    ]
    fired, shares = [], []
    for step, (stage, c, r, a) in enumerate(series):
        obs = tracker.observe(_result(c, r, a), ids, step=step, examples_seen=4 * step, stage=f"s{stage}",
                              stage_index=stage, probe_set="train")
        shares.append(obs.meta["displaced_share"])
        fired += [(x.alarm, x.step) for x in alarms.check("train", obs.meta, step=step, examples_seen=4 * step,
                                                          stage=obs.stage, stage_index=stage)]
    assert shares == [0.0, 0.5, 1.0, 1.0, 0.0]
    assert fired == [("displacement_share", 1), ("squeeze", 2)]
    assert obs.values["d_chosen"] == [0.0, 0.0]


def test_a_resumed_tracker_keeps_its_baseline_and_never_invents_one():
    first = DisplacementTracker()
    first.observe(_result([-10], [-20], [-5]), [1], step=0, examples_seen=0, stage="a", stage_index=0, probe_set="t")
    resumed = DisplacementTracker()
    resumed.restore(first.state(), stage_index=0)
    obs = resumed.observe(_result([-12], [-30], [-5]), [1], step=3, examples_seen=12, stage="a", stage_index=0,
                          probe_set="t")
    assert obs.values["d_chosen"] == [-2.0] and obs.meta["stage_start_step"] == 0
    blind = DisplacementTracker()
    blind.restore({}, stage_index=0)  # a checkpoint from before displacement existed
    assert blind.observe(_result([-12], [-30], [-5]), [1], step=3, examples_seen=12, stage="a", stage_index=0,
                         probe_set="t") is None


def test_ches_by_hand_and_zero_for_identical_responses():
    h_pos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # sum (1, 2), mean (0.5, 1)
    h_neg = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, -2.0]])  # sum (6, 0), mean (2, 0)
    value, norm = ches_from_hidden(h_pos, h_neg)
    assert value == pytest.approx(6 - 5)  # <(1,2),(6,0)> - ||(1,2)||^2
    assert norm == pytest.approx(1 - 1.25)  # <(0.5,1),(2,0)> - ||(0.5,1)||^2
    assert ches_from_hidden(h_pos, h_pos.clone()) == (pytest.approx(0.0), pytest.approx(0.0))


def test_ches_of_a_tiny_model_is_zero_for_identical_pairs_and_not_otherwise():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))
    same = [EncodedPair((1, 2, 3), (4, 5, 6)), EncodedPair((7,), (8, 9))]
    other = [EncodedPair((1, 2, 3), (10, 11)), EncodedPair((7,), (12, 13, 14, 15))]
    scores = ches(model, same, [EncodedPair(p.prompt_ids, p.response_ids) for p in same])
    assert np.allclose(scores["ches"], 0, atol=1e-9) and np.allclose(scores["ches_norm"], 0, atol=1e-9)
    differ = ches(model, same, other)
    assert np.all(np.abs(differ["ches"]) > 1e-6)


BASE = {"data": {"source": "x.jsonl"}, "stages": [{"loss": "sft"}]}


@pytest.mark.parametrize("alarms, message", [
    ({"displacement_share": 1.5}, "alarms.displacement_share: must be a share in (0, 1]"),
    ({"displacement_share": 0}, "alarms.displacement_share: must be a share in (0, 1]"),
    ({"squeeze": "maybe"}, "alarms.squeeze: expected true or false"),
    ({"share": 0.5}, "alarms.share: unknown key"),
])
def test_bad_alarm_values_get_one_line_naming_the_field(alarms, message):
    with pytest.raises(SpecError) as err:
        specs.parse({**BASE, "alarms": alarms})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_alarms_need_both_responses():
    with pytest.raises(SpecError, match="^alarms: .*add chosen and rejected to probing.response_types"):
        specs.parse({**BASE, "probing": {"response_types": ["chosen"]}, "alarms": {"squeeze": True}})


class PushDown:
    """Gradient ascent on y+ and, three times harder, on y-: y+ tends to fall while the margin rises."""

    @hookimpl
    def ldreg_register_losses(self, registry):
        def compute(logps):
            loss = (logps.chosen / logps.chosen_tokens + 3 * logps.rejected / logps.rejected_tokens).mean()
            return LossOutput(loss)

        registry.add(LossDefinition(name="push_down", compute=compute, description="lowers y+, y- three times harder",
                                    needs_rejected=True))


@pytest.fixture(scope="module")
def displaced_run(mongo_server, mongo_client):
    """One tiny run whose loss tends to displace y+, with CHES and a displacement alarm;
    (run id, database, what the run printed on stderr)."""
    import contextlib
    import io

    from ldreg.runner import run_experiment
    from ldreg.store.connection import disconnect

    plugins = load_plugins([PushDown()])
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDREG_MONGO_URL", mongo_server.url)
        mp.setenv("LDREG_DB", "displacement_alarm")
        spec = specs.load(SMOKE, ["name=displaced", "stages.0.loss=push_down", "stages.0.epochs=1",
                                  "probing.every=4", "probing.sets.0.n=6", "probing.response_types=[chosen,rejected]",
                                  "probing.influence=null", "probing.entk=null", "probing.ches={every: 0}",
                                  "alarms={displacement_share: 0.5}"], plugins)
        with contextlib.redirect_stderr(err):
            run = run_experiment(spec, progress=False, plugins=plugins)
        disconnect()
    return run.run_id, mongo_client["displacement_alarm"], err.getvalue()


def test_alarm_fires_once_and_is_stored_as_an_event(displaced_run):
    from ldreg.store.collections import OBSERVATIONS
    from ldreg.store.events import find_events

    run_id, db, err = displaced_run
    docs = list(db[OBSERVATIONS].find({"run_id": run_id, "kind": "displacement"}).sort("step", 1))
    shares = [d["meta"]["displaced_share"] for d in docs]
    assert shares[0] == 0.0 and max(shares) >= 0.5  # the stage start, then displaced (2 of 3 here)
    events = find_events([run_id], db=db)
    assert [(e["alarm"], e["probe_set"]) for e in events] == [("displacement_share", "train")]
    first = next(d for d in docs if d["meta"]["displaced_share"] >= 0.5)
    assert (events[0]["step"], events[0]["value"]) == (first["step"], first["meta"]["displaced_share"])
    assert err.count("ALARM displacement_share") == 1
    assert db.runs.find_one({"_id": run_id})["info"]["alarms"][0]["step"] == first["step"]
    ches_docs = list(db[OBSERVATIONS].find({"run_id": run_id, "kind": "ches"}))
    assert [d["step"] for d in ches_docs] == [0] and len(ches_docs[0]["values"]["ches"]) == 6


def test_events_and_ches_commands_read_the_store(displaced_run, monkeypatch, mongo_server, tmp_path):
    import json

    from click.testing import CliRunner

    from ldreg.cli import main

    run_id, db, _ = displaced_run
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "displacement_alarm")
    listed = CliRunner().invoke(main, ["events", "--json", "--runs", str(run_id)])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["run"], r["alarm"]) for r in rows] == [(run_id, "displacement_share")]
    bad = CliRunner().invoke(main, ["events", "--runs", "one,two"])
    assert bad.exit_code == 2 and "--runs: run ids are whole numbers" in bad.output
    out = tmp_path / "ches.csv"
    drawn = CliRunner().invoke(main, ["ches", str(run_id), "--out", str(out)])
    assert drawn.exit_code == 0, drawn.output
    assert len(out.read_text().splitlines()) == 1 + 6 and "Spearman" in drawn.output


def test_report_section_states_the_correlation_from_the_database(displaced_run):
    from scipy.stats import spearmanr

    from ldreg.paper.report import ches_section
    from ldreg.query.events import event_rules
    from ldreg.store.collections import OBSERVATIONS
    from ldreg.store.events import find_events

    run_id, db, _ = displaced_run
    title, chart, predicts, shows, numbers = ches_section(db, [run_id], "one tiny run")
    ches_doc = db[OBSERVATIONS].find_one({"run_id": run_id, "kind": "ches"})
    probes = list(db[OBSERVATIONS].find({"run_id": run_id, "kind": "probe", "response_type": "chosen"}).sort("step", 1))
    start, end = probes[0]["values"]["logp_sum"], probes[-1]["values"]["logp_sum"]
    assert probes[0]["example_ids"] == ches_doc["example_ids"] == probes[-1]["example_ids"]
    rho = spearmanr(ches_doc["values"]["ches"], [b - a for a, b in zip(start, end)])[0]
    assert f"Spearman {rho:+.2f}" in shows.split(" | ")[0]
    assert shows.split(" | ")[0].split(":")[1].split(" —")[0].strip() in ("held", "did not hold", "inconclusive")
    assert "Razin" in predicts and f"#{run_id}" in numbers
    chart.to_dict()  # a valid Vega-Lite spec
    assert event_rules(find_events([run_id], db=db)).to_dict()["mark"]["type"] == "rule"


def test_an_event_is_stored_once_and_a_dead_server_loses_it_loudly_not_silently(tmp_path, monkeypatch, capsys):
    """Replaying an alarm stores nothing new; with the server killed, the run goes on, the warning
    names where the event still is (the run's info), and nothing raises."""
    from types import SimpleNamespace

    from faultkit import kill_server
    from ldreg.dynamics.displacement import Crossing
    from ldreg.runner import raise_alarm
    from ldreg.store.connection import disconnect, open_client
    from ldreg.store.events import find_events
    from ldreg.store.server import EmbeddedServer

    server = EmbeddedServer(tmp_path / "db")
    info = server.start()
    monkeypatch.setenv("LDREG_MONGO_URL", info.url)
    monkeypatch.setenv("LDREG_DB", "events_fault")
    crossing = Crossing("displacement_share", "train", step=3, examples_seen=12, stage="1-dpo", stage_index=1,
                        threshold=0.5, value=0.75, summary={"displaced_share": 0.75, "n": 4})
    try:
        ctx = SimpleNamespace(run_id=41, info={})
        raise_alarm(ctx, crossing)
        raise_alarm(ctx, Crossing(**{**crossing.__dict__, "step": 9}))  # a replay (e.g. a resume) of the same alarm
        client = open_client(info.url)
        stored = find_events([41], db=client["events_fault"])
        assert [(e["alarm"], e["step"]) for e in stored] == [("displacement_share", 3)]
        client.close()
        kill_server(server)
        disconnect()
        dead = SimpleNamespace(run_id=42, info={})
        raise_alarm(dead, crossing)
        err = capsys.readouterr().err
        assert "ALARM displacement_share" in err
        assert "run 42: alarm displacement_share not stored" in err and "ldreg runs show 42" in err
        assert dead.info["alarms"][0]["value"] == 0.75
    finally:
        disconnect()
        server.stop()

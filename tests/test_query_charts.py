"""The shipped figures, drawn from buckets in the real server: what they plot, what their axes and
titles say, the response types' vocabulary, and that they fit a 1280-px page (rendered, not guessed)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ldreg.observations import ListSink, Observation
from ldreg.query.charts.common import PAGE_MARGIN, PAGE_WIDTH
from ldreg.query.execute import build
from ldreg.query.spec import load
from ldreg.registry import get_plugins
from ldreg.store.documents import bucket_from_observation

QUERIES = Path(__file__).resolve().parents[1] / "queries"
SFT_TYPES = ["chosen", "rejected", "chosen_rephrase_semantic", "chosen_rephrase_format", "irrelevant_train",
             "irrelevant_test", "random_sentence", "chosen_permuted", "random_permuted"]
# The vocabulary of issue 10: what a reader sees for each type, set by the response-type plugins.
VOCABULARY = {"chosen": "y+", "rejected": "y-", "chosen_rephrase_semantic": "y+ rephrase (semantic)",
              "chosen_permuted": "permuted y+", "random_sentence": "random sentence"}


def plugin_labels() -> dict[str, str]:
    """What a run records: every built-in type's label, from the real pluggy registrations."""
    registry = get_plugins().responses
    return {t: registry.get(t).label for t in SFT_TYPES}


def insert(db, run_id: int, name: str, seed: int, stages: list[str]) -> None:
    """A run probing every SFT type: 3 probes per stage, values that differ per example and step."""
    start = dt.datetime(2025, 1, 1, 12, run_id)
    db.runs.insert_one({"_id": run_id, "experiment": {"name": name}, "status": "COMPLETED", "start_time": start,
                        "meta": {"tags": []}, "info": {"response_labels": plugin_labels()},
                        "config": {"seed": seed, "stages": [{"loss": s, "name": s} for s in stages]}})
    docs, step = [], 0
    for index, stage in enumerate(stages):
        for k in range(3):
            for t_i, rtype in enumerate(SFT_TYPES):
                values = [-40.0 - 5 * t_i + 3 * e + (k * (index + 1) * (e - 1.5)) - 0.2 * k * seed for e in range(4)]
                obs = Observation(kind="probe", step=step, examples_seen=16 * step, stage=stage, stage_index=index,
                                  probe_set="train", response_type=rtype, example_ids=[0, 1, 2, 3],
                                  values={"logp_sum": values, "argmax_logp": [v / 4 for v in values]})
                docs.append(bucket_from_observation(run_id, obs))
            step += 4 if k < 2 else 0  # the stage's last probe and the next stage's first share a step
    db.observations.insert_many(docs)


@pytest.fixture
def runs(db):
    insert(db, 1, "sft-only", 1, ["sft"])
    insert(db, 2, "sft-only", 2, ["sft"])
    insert(db, 3, "sft-dpo", 1, ["sft", "dpo"])
    insert(db, 4, "sft-dpo", 2, ["sft", "dpo"])
    insert(db, 5, "extend-dpo", 1, ["extend", "dpo"])
    return db


def figure(db, name: str, ids: list[int], *overrides: str):
    spec = load(QUERIES / f"{name}.yaml", [f"runs={','.join(map(str, ids))}", *overrides])
    chart, frame = build(spec, db)
    return chart, chart.to_dict(), frame


def texts(spec: dict) -> str:
    return str(spec)


def rendered_width(chart) -> float:
    import vl_convert

    svg = vl_convert.vegalite_to_svg(chart.to_dict())
    return float(re.search(r'<svg[^>]*\swidth="([\d.]+)"', svg).group(1))


def test_sft_figure_draws_the_change_in_the_plugins_vocabulary(runs):
    chart, spec, frame = figure(runs, "sft-probes", [1, 2])
    assert set(frame["change"]) == {"stage_start"}
    assert (frame.groupby(["run_id", "series"])["mean"].first() == 0).all()  # every curve starts at 0
    labels = plugin_labels()
    assert set(frame["series"]) == set(labels.values())
    assert VOCABULARY.items() <= labels.items()
    assert not set(SFT_TYPES) & set(frame["series"])  # no raw type names in panels
    text = texts(spec)
    assert "change in log π(y|x) since SFT began" in text and "(nats, summed over tokens)" in text
    assert "'title': 'examples seen'" in text
    title = spec["title"]
    assert title["text"].endswith("?")  # a question, never a verdict
    assert "runs #1 (seed 1), #2 (seed 2), each drawn on its own" in title["subtitle"]
    assert any("paired t-interval" in line for line in title["subtitle"])
    assert "'datum': 0" in text  # the zero line
    assert rendered_width(chart) <= PAGE_WIDTH - 2 * PAGE_MARGIN


def test_level_curves_stay_available(runs):
    _, spec, frame = figure(runs, "sft-probes", [1], "aggregate.change=null")
    assert frame["change"].isna().all() and frame["mean"].min() < -40
    assert "log π(y|x)" in texts(spec) and "change in" not in texts(spec)


def test_dpo_figure_plots_the_margin_on_its_own_panel(runs):
    chart, spec, frame = figure(runs, "dpo-squeeze", [3, 4])
    assert set(frame["stage_index"]) == {1}  # the preference stage only, from its own start
    assert list(dict.fromkeys(frame["series"])) == ["y+", "y-", "margin: y+ − y-", "argmax confidence (on y+)"]
    margin = frame[frame["series"] == "margin: y+ − y-"]
    assert set(margin["minus"]) == {"rejected"}
    # the margin of these buckets: y+ - y- is 5 nats per example at every step, so its change is 0
    assert margin["mean"].abs().max() == pytest.approx(0.0, abs=1e-9)
    assert spec["resolve"]["scale"]["y"] == "independent"  # y+'s small change on its own axis
    text = texts(spec)
    assert "examples seen since DPO began" in text and "change since DPO began" in text
    assert spec["title"]["text"].endswith("?")
    assert rendered_width(chart) <= PAGE_WIDTH - 2 * PAGE_MARGIN


def test_extend_figure_colours_pipelines_and_dashes_seeds(runs):
    chart, spec, frame = figure(runs, "extend-vs-baseline", [3, 4, 5])
    assert set(frame["series"]) >= {"y+", "y-", "y+ of another train prompt", "random sentence", "margin: y+ − y-"}
    encoding = spec["spec"]["layer"][1]["encoding"]
    assert encoding["color"]["field"] == "name" and encoding["strokeDash"]["field"] == "seed"
    assert "the squeeze is weaker" not in texts(spec) and spec["title"]["text"].endswith("?")
    assert rendered_width(chart) <= PAGE_WIDTH - 2 * PAGE_MARGIN


def test_every_builtin_type_has_its_own_label():
    registry = get_plugins().responses
    names = [r.name for r in registry.registrations() if r.plugin == "ldreg.responses"]
    assert len(names) == 15
    labels = [registry.get(n).label for n in names]
    assert all(labels) and len(set(labels)) == len(labels)


def test_a_run_records_the_labels_of_the_types_it_probes(tmp_path, monkeypatch):
    from ldreg.backends import resolve_backend
    from ldreg.runner import run_body
    from ldreg.spec import load as load_spec

    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    plugins = get_plugins()
    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml",
                     ["stages.0.epochs=1", "probing.influence=null", "probing.entk=null", "probing.every=64"], plugins)
    ctx = SimpleNamespace(run_id=0, info={}, log_scalar=lambda *a: None, add_artifact=lambda *a: None)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    run_body(spec, ctx, plugins=plugins, backend=resolve_backend("cpu", plugins.backends), progress=False,
             sink=ListSink())
    assert ctx.info["response_labels"] == {"chosen": "y+", "chosen_permuted": "permuted y+"}
    # and which plugin distributions, at which versions, made it
    from ldreg import __version__

    recorded = {r["plugin"]: (r["distribution"], r["version"]) for r in ctx.info["plugins"]}
    assert recorded["ldreg.losses"] == ("ldreg", __version__) and "ldreg.responses" in recorded


def test_the_query_layer_names_types_without_importing_training():
    import subprocess
    import sys

    code = ("import sys, ldreg.query.execute, ldreg.query.compare, ldreg.query.names; "
            "print(sorted(m for m in ('torch', 'ldreg_plugins', 'ldreg.runner', 'ldreg.registry') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

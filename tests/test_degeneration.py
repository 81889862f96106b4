"""Degeneration probes: the text measures by hand, generation on the spec's schedule through a real
tracked run into the real database, the same text from the same seed, and the report's sections."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pytest

from ldreg import spec as specs
from ldreg.dynamics.degeneration import distinct_n, generate_probes, repeated_ngram_rate, text_metrics
from ldreg.errors import SpecError
from ldreg.models import load_model, load_tokenizer
from ldreg.store.collections import OBSERVATIONS

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def test_text_measures_by_hand():
    loop = "a b a b a b".split()
    # unigrams a, b of 6; bigrams ab, ba of 5; 4-grams abab, baba, abab: one of 3 repeats
    assert distinct_n(loop, 1) == pytest.approx(2 / 6) and distinct_n(loop, 2) == pytest.approx(2 / 5)
    assert repeated_ngram_rate(loop, 4) == pytest.approx(1 / 3) and repeated_ngram_rate(loop, 2) == pytest.approx(3 / 5)
    fresh = "the cat sat on a mat".split()
    assert text_metrics(fresh) == {"rep_4": 0.0, "distinct_1": 1.0, "distinct_2": 1.0, "length": 6.0}
    short = text_metrics(["word", "word"])  # no 4-gram to count: not measurable, never 0
    assert math.isnan(short["rep_4"]) and short["distinct_1"] == 0.5 and short["distinct_2"] == 1.0
    assert math.isnan(text_metrics([])["distinct_1"])


def test_the_same_seed_writes_the_same_text_and_greedy_ignores_it(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    prompts = [tokenizer("Human: How do I bake bread?\n\nAssistant:")["input_ids"],
               tokenizer("Human: What is a verb?\n\nAssistant:")["input_ids"]]
    kw = dict(max_new_tokens=12, greedy=True, samples=2, step=3)
    one = generate_probes(model, tokenizer, prompts, [7, 9], seed=1, **kw)
    again = generate_probes(model, tokenizer, prompts, [7, 9], seed=1, **kw)
    other = generate_probes(model, tokenizer, prompts, [7, 9], seed=2, **kw)
    assert one.texts == again.texts and one.values == again.values
    assert one.example_ids == {"greedy": [7, 9], "sampled": [7, 7, 9, 9]}
    assert other.texts["greedy"] == one.texts["greedy"] and other.texts["sampled"] != one.texts["sampled"]
    for name, values in one.values.items():
        assert all(0 < h <= math.log(len(tokenizer)) for h in values["entropy"]), name
        assert all(1 <= n <= 12 for n in values["length"])


def test_a_generation_block_that_generates_nothing_names_the_field():
    with pytest.raises(SpecError, match=r"probing\.generation: generates nothing; set greedy: true"):
        specs.load(SMOKE, ["probing.generation={greedy: false, samples: 0}"])


OVERRIDES = ["stages.0.epochs=1", "stages.0.batch_size=6", "probing.every=6", "probing.sets.0.n=3",
             "probing.influence={every: 0, n: 2, lr: 5.0e-5, update_types: [chosen], predict: true}",
             "probing.entk=null",
             "probing.generation={every: 12, prompts: 2, max_new_tokens: 8, samples: 1, seed: 5}"]


@pytest.mark.slow
def test_a_run_stores_generations_on_schedule_reproducibly_and_the_report_shows_them(mongo_url, mongo_client,
                                                                                     monkeypatch, tmp_path):
    from ldreg.paper.report import Report, prediction_and_degeneration_figures
    from ldreg.runner import run_experiment

    monkeypatch.setenv("LDREG_DB", "degeneration")
    db = mongo_client["degeneration"]
    ids = [run_experiment(specs.load(SMOKE, OVERRIDES + [f"name=degen-{k}"]), progress=False).run_id for k in (1, 2)]

    def generations(run_id):
        docs = db[OBSERVATIONS].find({"run_id": run_id, "kind": "generation"}).sort([("step", 1), ("response_type", 1)])
        return [(d["examples_seen"], d["response_type"], d["example_ids"], d["meta"]["texts"], d["values"]) for d in docs]

    first, second = generations(ids[0]), generations(ids[1])
    # 18 examples in batches of 6: before training, then at 12 (the crossing of 12), greedy and sampled each
    assert [(seen, name) for seen, name, *_ in first] == [(0, "greedy"), (0, "sampled"), (12, "greedy"), (12, "sampled")]
    assert all(len(texts) == 2 and len(ids_) == 2 for _, _, ids_, texts, _ in first)
    assert first == second  # same seed, same spec: the same text and the same numbers

    predicted = list(db[OBSERVATIONS].find({"run_id": ids[0], "kind": "prediction"}))
    measured = {d["response_type"]: d["values"]["delta_logp"]
                for d in db[OBSERVATIONS].find({"run_id": ids[0], "kind": "influence"})}
    assert sorted(d["response_type"] for d in predicted) == sorted(measured)
    for d in predicted:
        assert d["values"]["measured"] == pytest.approx(measured[d["response_type"]])
        assert d["meta"]["entk_mode"] == "full"

    report = Report("beyond the paper")
    prediction_and_degeneration_figures(report, db, ids[:1])
    assert [f.title.split("?")[0] for f in report.figures] == [
        "How much of one step's change does the first-order term -η A K G explain",
        "Does the model's own text become repetitive during training"]
    assert "explains" in report.figures[0].shows and "R^2 about y = x" in report.figures[0].shows
    page = report.write(tmp_path / "r.html").read_text()
    assert "<details><summary>The generated texts" in page
    assert first[-1][3][0].strip() and html.escape(first[-1][3][0][:20]) in page

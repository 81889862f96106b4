"""Win rate: the position-swap rule, the tallies and intervals with judges whose answers are known,
the verdicts stored and reused in the real database, answers written by real tracked runs, and
`ldreg winrate` end to end (deleting a run deletes its verdicts)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ldreg import spec as specs
from ldreg.errors import SpecError
from ldreg.hookspecs import hookimpl
from ldreg.judging.judge import Judge
from ldreg.judging.winrate import Tally, WinRateError, swapped_outcome, win_rate
from ldreg.observations import Observation
from ldreg.store.collections import JUDGEMENTS, OBSERVATIONS
from ldreg.store.documents import bucket_from_observation
from ldreg.testing import load_plugin

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


class Longer(Judge):
    """Prefers the longer response, whatever its position: a judge without position bias."""

    name = "longer"
    description = "the longer response wins"
    options = {"strict": (1, "unused")}
    calls = 0

    def verdicts(self, queries, settings):
        type(self).calls += len(queries)
        return ["A" if len(q.first) > len(q.second) else "B" if len(q.first) < len(q.second) else "tie"
                for q in queries]


class First(Judge):
    """Always says A: pure position bias."""

    name = "first"
    description = "always A"

    def verdicts(self, queries, settings):
        return ["A"] * len(queries)


class KnownJudges:
    @hookimpl
    def ldreg_register_judges(self, registry):
        registry.add(Longer())
        registry.add(First())


def test_a_win_needs_both_orders_to_agree():
    assert swapped_outcome("A", "B") == "win" and swapped_outcome("B", "A") == "loss"
    for first, second in [("A", "A"), ("B", "B"), ("tie", "B"), ("A", "tie"), ("tie", "tie")]:
        assert swapped_outcome(first, second) == "tie"
    t = Tally()
    for pair in [("A", "B"), ("A", "B"), ("B", "A"), ("A", "A")]:
        t.add(*pair)
    assert (t.wins, t.ties, t.losses, t.flips) == (2, 1, 1, 1) and t.rate == pytest.approx(2.5 / 4)
    d = t.as_dict()  # scores 1, 1, 0, 0.5: mean 0.625, sd 0.4787, t(3) 3.182
    assert d["ci95"] == pytest.approx([0.625 - 3.1824 * 0.4787 / 2, 0.625 + 3.1824 * 0.4787 / 2], abs=1e-3)


def _store_answers(db, run_id, texts, ids=None, chosen=None, rejected=None):
    ids = ids or list(range(len(texts)))
    obs = Observation(kind="answers", step=5, examples_seen=20, stage="0-sft", stage_index=0, probe_set="test",
                      response_type="greedy", example_ids=ids, values={"length": [float(len(t)) for t in texts]},
                      meta={"texts": texts, "prompts": [f"prompt {i}" for i in ids],
                            "chosen": chosen or ["a long preferred answer"] * len(ids),
                            "rejected": rejected or ["short"] * len(ids)})
    db[OBSERVATIONS].insert_one(bucket_from_observation(run_id, obs))


def test_known_judges_give_known_tallies_and_verdicts_are_stored_once(db):
    judges = load_plugin(KnownJudges()).judges
    _store_answers(db, 1, ["long answer one", "x", "same", "long answer four"])
    _store_answers(db, 2, ["y", "longer answer two", "same", "z"],
                   rejected=["a much longer rejected answer than y+"] + ["short"] * 3)
    Longer.calls = 0
    result = win_rate(db, judges.get("longer"), {"strict": 1}, [1], [2])
    assert result.pairs[0] | {"ci95": None} == {"run_a": 1, "run_b": 2, "n": 4, "wins": 2, "ties": 1, "losses": 1,
                                                "win_rate": 0.625, "ci95": None, "flip_rate": 0.0}
    assert result.overall["interval_over"] == "prompts"
    # the check uses run A's test pairs: y+ is longer in all four, so the judge agrees every time
    assert result.sanity == {"n": 4, "agreement": 1.0, "contradiction": 0.0, "flip_rate": 0.0, "agree": 4,
                             "contradict": 0, "undecided": 0}
    assert Longer.calls == 16 and result.judged == 8 and result.reused == 0
    again = win_rate(db, judges.get("longer"), {"strict": 1}, [1], [2])
    assert Longer.calls == 16 and again.reused == 8 and again.pairs == result.pairs  # read back, not re-judged
    assert db[JUDGEMENTS].count_documents({"run_ids": 2}) == 4

    biased = win_rate(db, judges.get("first"), {}, [1], [2], n=3)
    assert (biased.overall["ties"], biased.overall["flip_rate"], biased.overall["win_rate"]) == (3, 1.0, 0.5)
    assert biased.sanity["agreement"] == 0.0 and biased.sanity["flip_rate"] == 1.0


def test_several_seeds_pool_with_an_interval_over_seeds(db):
    judges = load_plugin(KnownJudges()).judges
    _store_answers(db, 1, ["aaaa", "aaaa", "aaaa", "a"])
    _store_answers(db, 2, ["b", "b", "b", "bbbb"])
    _store_answers(db, 3, ["aaaa", "a", "a", "a"])
    _store_answers(db, 4, ["b", "bbbb", "bbbb", "bbbb"])
    result = win_rate(db, judges.get("longer"), {}, [1, 3], [2, 4], check=False)
    assert [p["win_rate"] for p in result.pairs] == [0.75, 0.25]
    o = result.overall  # t(1) 12.706 x sd 0.3536 / sqrt 2
    assert o["interval_over"] == "seeds" and o["win_rate"] == 0.5 and (o["wins"], o["losses"]) == (4, 4)
    assert o["ci95"] == pytest.approx([0.5 - 12.706 * 0.25, 0.5 + 12.706 * 0.25], abs=1e-3)
    assert result.sanity is None
    with pytest.raises(WinRateError, match="same number of runs"):
        win_rate(db, judges.get("longer"), {}, [1, 3], [2])
    with pytest.raises(WinRateError, match="run 9 has no stored answers.*answers: "):
        win_rate(db, judges.get("longer"), {}, [1], [9])
    _store_answers(db, 5, ["q"], ids=[77])
    with pytest.raises(WinRateError, match="no prompt in common"):
        win_rate(db, judges.get("longer"), {}, [1], [5])


def test_answers_from_the_test_split_need_one():
    with pytest.raises(SpecError, match="answers.source: test needs held-out prompts"):
        specs.load(SMOKE, ["data.test_fraction=0", "answers={n: 2}"])


PLUGIN = '''
from ldreg.hookspecs import hookimpl
from ldreg.judging.judge import Judge


class Longer(Judge):
    name = "longer"
    description = "the longer response wins"

    def verdicts(self, queries, settings):
        return ["A" if len(q.first) > len(q.second) else "B" if len(q.first) < len(q.second) else "tie"
                for q in queries]


@hookimpl
def ldreg_register_judges(registry):
    registry.add(Longer())
'''

OVERRIDES = ["stages.0.epochs=1", "stages.0.batch_size=6", "probing.every=12", "probing.sets.0.n=2",
             "probing.influence=null", "probing.entk=null", "answers={n: 5, max_new_tokens: 6, sampling: sample}"]


@pytest.mark.slow
def test_runs_answer_at_their_end_and_the_cli_judges_them(mongo_url, mongo_client, monkeypatch, tmp_path):
    from ldreg.cli import main
    from ldreg.runner import run_experiment
    from ldreg.store.runs import delete_run

    monkeypatch.setenv("LDREG_DB", "winrate")
    db = mongo_client["winrate"]
    ids = [run_experiment(specs.load(SMOKE, OVERRIDES + [f"stages.0.lr={lr}"]), progress=False).run_id
           for lr in (1e-3, 3e-2)]
    docs = [db[OBSERVATIONS].find_one({"run_id": r, "kind": "answers"}) for r in ids]
    assert [d["example_ids"] for d in docs][0] == docs[1]["example_ids"] and len(docs[0]["example_ids"]) == 5
    assert docs[0]["step"] == 3 and docs[0]["meta"]["prompts"] == docs[1]["meta"]["prompts"]  # the final model
    assert all(len(d["meta"]["texts"]) == 5 and max(d["values"]["length"]) <= 6 for d in docs)
    assert docs[0]["meta"]["texts"] != docs[1]["meta"]["texts"]  # different models, same draws
    # the same spec answers with the same text (the seed is the spec's, the draws the example's)
    rerun = run_experiment(specs.load(SMOKE, OVERRIDES + ["stages.0.lr=1e-3"]), progress=False).run_id
    assert db[OBSERVATIONS].find_one({"run_id": rerun, "kind": "answers"})["meta"]["texts"] == docs[0]["meta"]["texts"]

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "known_judge.py").write_text(textwrap.dedent(PLUGIN))
    out = CliRunner().invoke(main, ["--plugins-dir", str(tmp_path / "plugins"), "winrate", str(ids[0]), str(ids[1]),
                                    "--judge", "longer", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    a, b = (d["meta"]["texts"] for d in docs)
    wins = sum(len(x) > len(y) for x, y in zip(a, b))
    losses = sum(len(x) < len(y) for x, y in zip(a, b))
    assert (got["overall"]["wins"], got["overall"]["losses"], got["overall"]["ties"]) == (wins, losses, 5 - wins - losses)
    agree = sum(len(c) > len(r) for c, r in zip(docs[0]["meta"]["chosen"], docs[0]["meta"]["rejected"]))
    assert got["sanity"]["agree"] == agree and got["sanity"]["n"] == 5

    table = CliRunner().invoke(main, ["--plugins-dir", str(tmp_path / "plugins"), "winrate", str(ids[0]), str(ids[1]),
                                      "--judge", "longer"], catch_exceptions=False).output
    assert "win rate of A:" in table and "judge check on 5 test pairs" in table and "10 reused" in table
    bad = CliRunner().invoke(main, ["winrate", str(ids[0]), str(ids[1]), "--judge", "nope"])
    assert bad.exit_code == 2 and "no judge named 'nope'" in bad.output and "Traceback" not in bad.output

    assert delete_run(ids[1], db)["judgements"] == 5
    assert db[JUDGEMENTS].count_documents({"run_ids": ids[1]}) == 0
    assert math.isfinite(got["overall"]["win_rate"])


def test_the_report_figure_reads_the_stored_answers_and_says_how_weak_the_judge_is(db, tiny_model_dir, tmp_path):
    from ldreg.paper.report import Report, winrate_section

    _store_answers(db, 1, ["an answer", "another answer", "a third"])
    _store_answers(db, 2, ["a reply", "one more reply", "the last"])
    title, chart, predicts, shows, numbers = winrate_section(db, [1], [2], "seed 1", judge_model=str(tiny_model_dir))
    assert "Table 1" in title and "Table 1" in predicts
    assert "over 3 prompts" in shows and "is weak" in shows and "3 pairs" in shows
    assert "ldreg winrate 1 2" in numbers and "6 comparisons judged" in numbers
    report = Report("t")
    report.add(title, chart, predicts, shows, numbers)
    assert "extend&#x27;s answers against the baseline&#x27;s" in report.write(tmp_path / "r.html").read_text()

"""Findings judged on per-example buckets stored in the real server: held, did not hold, inconclusive.

Each synthetic type is built so that its verdict is known before the test runs: a clear rise, a
rise with no fall, pure noise, a length effect that vanishes per token, a curve that differs from
its baseline everywhere but at the last point.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ldreg.paper import findings as F
from ldreg.paper import findings_table
from ldreg.cli import main
from ldreg.observations import Observation
from ldreg.store.sink import StoreSink

N = 40  # probe examples
STEPS = 7  # probes per stage: fractions 0, 1/6, ..., 1; the peak window is the probes at 1/6 and 1/3


def _store(db, run_id: int, curves: dict[str, np.ndarray], stage_index: int = 0, tokens: dict[str, int] | None = None,
           argmax: np.ndarray | None = None) -> None:
    """``curves``: type -> per-token log-probs, probes x examples; stored as buckets (summed = per token x tokens)."""
    sink = StoreSink(run_id, db=db)
    ids = list(range(100, 100 + N))
    for rtype, per_token in curves.items():
        n = (tokens or {}).get(rtype, 10)
        for step, row in enumerate(per_token):
            values = {"logp_sum": row * n, "n_tokens": np.full(N, float(n)), "logp_mean": row}
            if argmax is not None and rtype == "chosen":
                values["argmax_logp"] = argmax[step]
            sink.emit(Observation(kind="probe", step=stage_index * 100 + step, examples_seen=stage_index * 1000 + step * 50,
                                  stage=f"s{stage_index}", stage_index=stage_index, probe_set="train",
                                  response_type=rtype, example_ids=ids, values=values))
    sink.close()


def _curve(rng, shape: list[float], noise: float = 0.05, level: float = -5.0) -> np.ndarray:
    """Per-token curves: every example follows ``shape`` from its own level, plus noise per probe."""
    start = level + rng.normal(0, 1.0, N)
    return np.array([start + s + rng.normal(0, noise, N) for s in shape])


@pytest.fixture
def sft_run(db):
    rng = np.random.default_rng(0)
    _store(db, 1, {
        "chosen": _curve(rng, [0, 1, 2, 3, 4, 5, 6]),
        "rejected": _curve(rng, [0, 0.3, 0.3, -0.2, -0.5, -0.8, -1.0]),          # rises, then falls
        "chosen_rephrase_semantic": _curve(rng, [0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]),  # only rises
        "random_sentence": _curve(rng, [0] * STEPS, noise=0.5),                   # noise
        "chosen_permuted": _curve(rng, [0, -0.2, -0.4, -0.6, -0.8, -1.0, -1.2]),
        "irrelevant_train": _curve(rng, [0, 1, 2, 3, 4, 5, 6], noise=0.3),        # as fast as y+ per token
    }, tokens={"chosen": 30, "irrelevant_train": 20})
    return F.Curves(db)


def test_sft_findings_each_type_on_its_own(sft_run):
    raises = F.sft_raises_chosen(sft_run, 1, seed=3)
    (chosen,) = raises.types
    test = chosen.tests[0]
    assert raises.verdict == "held" and raises.held is True and raises.seeds == [3] and raises.runs == [1]
    assert test.summed.n == N and test.summed.mean == pytest.approx(6 * 30, abs=1.0)  # 6 nats/token x 30 tokens
    assert test.per_token.mean == pytest.approx(6, abs=0.05) and test.summed.level == pytest.approx(0.95)

    rf = F.rise_then_fall(sft_run, 1)
    verdicts = {t.response_type: t.verdict for t in rf.types}
    assert verdicts == {"rejected": "held", "chosen_rephrase_semantic": "did not hold", "random_sentence": "inconclusive"}
    assert rf.verdict == "did not hold" and rf.held is False  # no majority vote: one type failed
    rejected = next(t for t in rf.types if t.response_type == "rejected")
    rise, fall = rejected.tests
    assert rise.summed.mean == pytest.approx(3.0, abs=0.3) and fall.summed.mean == pytest.approx(-13.0, abs=0.3)
    # three types tested together, Holm's steps: 0.05/3, 0.05/2, 0.05 (the noise last)
    levels = {t.response_type: t.level for t in rf.types}
    assert sorted(levels.values()) == pytest.approx([0.95, 0.975, 1 - 0.05 / 3])
    assert levels["random_sentence"] == pytest.approx(0.95)

    assert F.permutations_fall(sft_run, 1).verdict == "held"


def test_a_length_effect_is_not_a_slower_rise(sft_run):
    other = F.other_prompts_rise_slower(sft_run, 1)
    rises, slower = other.types[0].tests
    assert rises.judged.excludes_zero() == 1
    # summed nats: y+ (30 tokens) gains 180, other prompts (20 tokens) 120 -- a gap of 60 nats, all length
    assert slower.summed.mean == pytest.approx(60, abs=3) and slower.summed.low > 0
    assert slower.unit == "nats/token" and slower.per_token.low < 0 < slower.per_token.high
    assert other.verdict == "inconclusive"


def test_dpo_squeeze_and_extend_over_the_whole_curve(db):
    rng = np.random.default_rng(1)
    base_chosen = [0, -0.4, -0.8, -1.0, -1.0, -1.0, -1.0]
    _store(db, 2, {"chosen": _curve(rng, base_chosen), "rejected": _curve(rng, [0, -1, -2, -3, -4, -5, -6]),
                   "random_sentence": _curve(rng, [0, -1, -1, -1, -1, -1, -1])},
           stage_index=1, argmax=_curve(rng, [0, 0.5, 1, 1.5, 2, 2.5, 3]))
    # extend: y+ decays later but ends where the baseline ends (the last point ties)
    _store(db, 3, {"chosen": _curve(rng, [0, -0.1, -0.2, -0.4, -0.6, -0.8, -1.0]),
                   "rejected": _curve(rng, [0, -1, -2, -3, -4, -5, -6]),
                   "random_sentence": _curve(rng, [0, -1, -1, -1, -1, -1, -1])}, stage_index=1)
    curves = F.Curves(db)
    sq = F.dpo_squeeze(curves, 2, stage=1)
    assert {t.response_type: t.verdict for t in sq.types} == {
        "chosen": "held", "rejected": "held", "margin": "held", "argmax_confidence": "held"}
    assert sq.verdict == "held"
    ext = F.extend_slows_decay(curves, baseline=2, extend=3, stage=1)
    by_type = {t.response_type: t for t in ext.types}
    area = by_type["chosen"].tests[0]
    # mean over the stage of the gap between the curves (trapezoids on 1/6 steps), x 10 tokens
    gap = np.array([0, 0.3, 0.6, 0.6, 0.4, 0.2, 0.0]) * 10
    assert area.summed.mean == pytest.approx(np.trapezoid(gap, np.linspace(0, 1, 7)), abs=0.3)
    assert by_type["chosen"].verdict == "held" and by_type["rejected"].verdict == "inconclusive"
    assert ext.verdict == "inconclusive"


def test_pooling_over_seeds(db):
    rng = np.random.default_rng(2)
    for run in (11, 12, 13):
        _store(db, run, {"chosen": _curve(rng, [0, 1, 2, 3, 4, 5, 6 + 0.5 * (run - 12)])})
    curves = F.Curves(db)
    per_seed = [F.sft_raises_chosen(curves, run, seed=run - 10) for run in (11, 12, 13)]
    pooled = F.pool(per_seed)
    (chosen,) = pooled.types
    assert pooled.seeds == [1, 2, 3] and pooled.runs == [11, 12, 13]
    assert chosen.tests[0].summed.n == 3 and chosen.tests[0].summed.mean == pytest.approx(60, abs=0.5)
    assert pooled.verdict == "held" and chosen.seed_verdicts == {1: "held", 2: "held", 3: "held"}
    # two seeds: held only when both held
    _store(db, 14, {"chosen": _curve(rng, [0] * STEPS, noise=0.5)})
    two = F.pool([per_seed[0], F.sft_raises_chosen(curves, 14, seed=4)])
    assert two.types[0].seed_verdicts == {1: "held", 4: "inconclusive"} and two.verdict == "inconclusive"


def test_findings_json_and_readme_come_from_the_same_data(sft_run, tmp_path):
    pooled = [F.pool([F.sft_raises_chosen(sft_run, 1, seed=1)]), F.pool([F.rise_then_fall(sft_run, 1, seed=1)])]
    tuning = [{"parameter": "lr", "value": "1e-4", "where": "x.yaml", "seed": 0, "also_inspected": [],
               "why": "y+ falls", "affects": "DPO"}]
    doc = findings_table.document(pooled, command="ldreg demo --seeds 1", scale="test", seeds=[1],
                                  runs={"sft-only": {1: 1}}, tuning=tuning, shared="the base model")
    json_path, md_path = findings_table.write(doc, tmp_path)
    stored = json.loads(json_path.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{findings_table.START}\nold hand-typed table\n{findings_table.END}\nafter\n")
    result = CliRunner().invoke(main, ["findings", "--json", str(json_path), "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert "old hand-typed table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert md_path.read_text() in text  # the README block is findings.md, rendered from findings.json
    change = stored["findings"][0]["per_seed"][0]["types"][0]["tests"][0]["change"]
    assert f"{change:+.2f}" in text and "runs #1" in text and "chosen on seed 0" in text
    assert "That seed is not among those reported." in text
    # a README without the markers gets one line naming the file and the fix
    (tmp_path / "bare.md").write_text("# nothing\n")
    bad = CliRunner().invoke(main, ["findings", "--json", str(json_path), "--readme", str(tmp_path / "bare.md")])
    assert bad.exit_code == 2 and "bare.md: needs one line" in bad.output
    # the real tier's findings (findings-real.json) fill their own block and leave the default one alone
    real_json = tmp_path / "findings-real.json"
    real_json.write_text(json_path.read_text())
    real_start, real_end = findings_table.markers("findings-real")
    readme.write_text(text + f"\n{real_start}\nold real table\n{real_end}\n")
    result = CliRunner().invoke(main, ["findings", "--json", str(real_json), "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    both = readme.read_text()
    assert "old real table" not in both and both.count(md_path.read_text()) == 2
    assert both.startswith(text) and "--json" in both.split(real_start, 1)[1]


def test_findings_speak_the_response_types_own_labels():
    """Captions (from the findings) and panels (from the plugins' labels) use one vocabulary."""
    from ldreg.paper.findings import LABELS
    from ldreg.registry import get_plugins

    responses = get_plugins().responses
    shared = [name for name in LABELS if name in responses]
    assert len(shared) >= 10
    for name in shared:
        assert LABELS[name] == responses.get(name).label, name

"""The report page: offline, every figure captioned, the findings table with its verdicts."""

import altair as alt
import pandas as pd

from types import SimpleNamespace

from ldreg.paper.findings import Finding
from ldreg.paper.report import Report, change_table, influence_caption, verdict_line, verdicts


def test_report_is_offline_and_captioned(tmp_path):
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    report = Report("a report")
    report.add("curves", chart, predicts="y rises", shows="y rose by 1")
    report.add("two findings", chart, predicts="both", shows="a: held — +1 | b: inconclusive — +0.1 [-1, 1]",
               numbers="<details>numbers</details>")
    report.findings = [Finding("y rises", "y rises", True, "3 -> 4"),
                       Finding("z falls", "z falls", False, "no"), Finding("w", "w", None, "no data")]
    report.runs = [{"id": 1, "name": "smoke", "seed": 0, "status": "COMPLETED", "seconds": 1.5}]
    report.timings = {"smoke": 1.5}
    text = report.write(tmp_path / "r.html").read_text()
    assert "Figure 1. curves" in text and "The paper predicts:</b> y rises" in text
    assert "Verdict computed:</b> y rose by 1" in text
    assert "<li>a: held — +1</li><li>b: inconclusive — +0.1 [-1, 1]</li>" in text and "<details>numbers" in text
    assert "<b>held</b>" in text and "<b>did not hold</b>" in text and "<b>not checked</b>" in text
    assert "vegaEmbed('#chart" in text and "https://cdn" not in text
    assert (tmp_path / "r-figures" / "figure-1.png").read_bytes()[:4] == b"\x89PNG"


def test_captions_take_the_verdict_from_the_findings():
    pooled = Finding("DPO lowers y+ (seeds 1, 2)", "p", None, "y+: inconclusive (seed 1 held, seed 2 inconclusive)",
                     verdict="inconclusive", key="dpo_squeeze")
    seed = Finding("DPO lowers y+ (seed 1)", "p", True, "y+: start -> end -1.70 [-2.5, -0.9]", key="dpo_squeeze")
    other = Finding("SFT raises y+", "p", True, "+38", key="sft_raises_chosen")
    line = verdicts([pooled, seed, other], "dpo_squeeze")
    assert line == ("DPO lowers y+ (seeds 1, 2): inconclusive — y+: inconclusive (seed 1 held, seed 2 inconclusive)"
                    " | DPO lowers y+ (seed 1): held — y+: start -> end -1.70 [-2.5, -0.9]")
    # any object with a name, evidence and held (or verdict) will do: the two sides change freely
    assert verdict_line(SimpleNamespace(name="x", held=False, evidence="e")) == "x: did not hold — e"
    assert verdicts([other], "extend_slows_decay") == "not checked in this run"


def test_change_table_gives_the_last_point_with_its_interval():
    frame = pd.DataFrame({"run_id": [3, 3], "run": ["seed=1"] * 2, "series": ["y+"] * 2, "response_type": ["chosen"] * 2,
                          "minus": [None, None], "quantity": ["logp_sum"] * 2, "stage_index": [1, 1], "step": [36, 90],
                          "n": [16, 16], "mean": [0.0, -1.7], "std": [0.0, 3.2], "ci_low": [0.0, -3.405],
                          "ci_high": [0.0, 0.005], "change": ["stage_start"] * 2})
    html = change_table(frame)
    assert "<td>36 → 90</td><td>16</td><td>-1.70</td><td>0.80</td><td>[-3.40, +0.01]</td>" in html
    assert "find_one" in html  # how to recompute it with plain pymongo
    assert change_table(frame.assign(change=None)) == ""  # levels: no change to report


def test_influence_caption_is_computed_from_the_matrix():
    frame = pd.DataFrame({"update_type": ["chosen"] * 3 + ["rejected"], "step": [0] * 4, "n": [4] * 4,
                          "response_type": ["chosen", "rejected", "chosen_permuted", "chosen"],
                          "response_label": ["y+", "y-", "permuted y+", "y+"], "mean": [0.5, -0.1, 0.2, 0.9]})
    assert influence_caption(frame).startswith("held: after one step on y+, y+ moved +0.5 nats (mean over 4 examples)")
    frame.loc[2, "mean"] = 0.7
    caption = influence_caption(frame)
    assert caption.startswith("did not hold") and "by response: permuted y+ +0.7, y+ +0.5, y- -0.1" in caption

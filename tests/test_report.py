"""The report page: offline, every figure captioned, the findings table with its verdicts."""

import altair as alt
import pandas as pd

from ldreg.findings import Finding
from ldreg.report import Report


def test_report_is_offline_and_captioned(tmp_path):
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    report = Report("a report")
    report.add("curves", chart, predicts="y rises", shows="y rose by 1")
    report.findings = [Finding("y rises", "y rises", True, "3 -> 4"),
                       Finding("z falls", "z falls", False, "no"), Finding("w", "w", None, "no data")]
    report.runs = [{"id": 1, "name": "smoke", "seed": 0, "status": "COMPLETED", "seconds": 1.5}]
    report.timings = {"smoke": 1.5}
    text = report.write(tmp_path / "r.html").read_text()
    assert "Figure 1. curves" in text and "The paper predicts:</b> y rises" in text
    assert "This run shows:</b> y rose by 1" in text
    assert "<b>held</b>" in text and "<b>did not hold</b>" in text and "<b>not checked</b>" in text
    assert "vegaEmbed('#chart" in text and "https://cdn" not in text
    assert (tmp_path / "r-figures" / "figure-1.png").read_bytes()[:4] == b"\x89PNG"

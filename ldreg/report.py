"""The main job's report: one offline HTML page, each figure captioned with what the paper predicts
and what these runs show, and the table of findings with their numbers.

Figures come from the same places a user's would: the simulation charts, and the shipped queries
in ``queries/`` run against this demo's run ids. Nothing is fetched from a network.
"""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ldreg.findings import Finding, table_html

QUERIES = Path(__file__).resolve().parents[1] / "queries"


@dataclass
class Figure:
    title: str
    chart: Any
    predicts: str
    shows: str


@dataclass
class Report:
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, title: str, chart: Any, predicts: str, shows: str) -> None:
        self.figures.append(Figure(title, chart, predicts, shows))

    def write(self, path: Path) -> Path:
        from ldreg.query.outputs import page

        blocks: list[Any] = ["<h2>Findings</h2>", table_html(self.findings)]
        for i, fig in enumerate(self.figures, start=1):
            blocks.append(f"<h2>Figure {i}. {html.escape(fig.title)}</h2>")
            blocks.append(fig.chart)
            blocks.append(f"<p class='note'><b>The paper predicts:</b> {html.escape(fig.predicts)}<br>"
                          f"<b>This run shows:</b> {html.escape(fig.shows)}</p>")
        blocks.append("<h2>Runs</h2>" + _runs_table(self.runs))
        blocks.append("<h2>Time</h2>" + _timings_table(self.timings))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(self.title, blocks, intro=self.intro))
        self.write_pngs(path.parent / f"{path.stem}-figures")
        return path

    def write_pngs(self, folder: Path) -> list[Path]:
        """Each figure also as a PNG (for slides and papers), beside the page."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, fig in enumerate(self.figures, start=1):
            target = folder / f"figure-{i}.png"
            fig.chart.save(str(target), scale_factor=1.5)
            written.append(target)
        return written


def query_chart(name: str, run_ids: Sequence[int], db, overrides: Sequence[str] = ()):
    """The chart of shipped query ``queries/NAME.yaml`` over exactly ``run_ids``."""
    from ldreg.query.run import build
    from ldreg.query.spec import load

    spec = load(QUERIES / f"{name}.yaml", [f"runs={','.join(map(str, run_ids))}", *overrides])
    return build(spec, db)[0]


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def _runs_table(runs: Sequence[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{r['id']}</td><td>{html.escape(str(r['name']))}</td><td>{r.get('seed', '')}</td>"
                   f"<td>{html.escape(str(r.get('status', '')))}</td><td>{r.get('seconds', '')}</td></tr>" for r in runs)
    return f"<table><tr><th>run</th><th>experiment</th><th>seed</th><th>status</th><th>seconds</th></tr>{rows}</table>"


def _timings_table(timings: dict[str, float]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in timings.items())
    return f"<p class='note'>On {html.escape(machine())}.</p><table><tr><th>step</th><th>seconds</th></tr>{rows}</table>"

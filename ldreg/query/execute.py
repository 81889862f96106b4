"""Running a query spec end to end: select, aggregate in the database, draw, write every format.

``run_query(spec_path, out, overrides)`` is what ``ldreg query`` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import altair as alt
import pandas as pd

from ldreg.query import outputs, writeback
from ldreg.query.charts.curves import curves_chart
from ldreg.query.charts.heatmaps import entk_heatmap, influence_heatmap
from ldreg.query.errors import QueryError
from ldreg.query.labels import flatten, run_labels
from ldreg.query.frame import curves_frame, entk_matrix
from ldreg.query.select import RunInfo, select_runs
from ldreg.store.connection import database
from ldreg.query.spec import QuerySpec, load

MAX_ENTK_PANELS = 4


def _add_config_column(frame: pd.DataFrame, runs: Sequence[RunInfo], key: str, where: str = "chart.color"
                       ) -> pd.DataFrame:
    """Colour (or dash) by a config key: its value per run as a column (``config.`` prefix optional);
    ``name`` is the experiment's name."""
    key = key.removeprefix("config.")
    values = {r.id: (r.name if key == "name" else flatten(r.config).get(key)) for r in runs}
    if all(v is None for v in values.values()):
        keys = sorted(set().union(*(flatten(r.config) for r in runs)))
        from ldreg.errors import closest

        raise QueryError(f"{where}: {key!r} is neither a column (run, series, response_type, stage) nor a "
                         f"config key of the selected runs{closest(key, keys)}")
    frame = frame.copy()
    frame[key] = frame["run_id"].map(lambda r: str(values.get(r)))
    return frame


LISTED_RUNS = 8  # beyond this many runs a subtitle names them as id ranges (a sweep's 44 runs made a 5,000-px line)


def seeds_line(runs: Sequence[RunInfo], pooled: bool) -> str:
    """Which runs and seeds a figure draws, and whether seeds are pooled: every figure says so."""
    seeds = sorted({str(r.config.get("seed", "?")) for r in runs})
    if pooled:
        return (f"seeds {', '.join(seeds)} pooled per configuration (runs {run_list(runs)}): "
                "mean of the per-run means, band across runs")
    if len(runs) > LISTED_RUNS:
        return f"{len(runs)} runs ({run_list(runs)}; seeds {', '.join(seeds)}), each drawn on its own"
    return "runs " + ", ".join(f"#{r.id} (seed {r.config.get('seed', '?')})" for r in runs) + ", each drawn on its own"


def run_list(runs: Sequence[RunInfo]) -> str:
    """``#3, #5`` for a few runs; consecutive ids as ranges (``#9-#52``) for many."""
    ids = sorted(r.id for r in runs)
    if len(ids) <= LISTED_RUNS:
        return ", ".join(f"#{i}" for i in ids)
    spans, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"#{start}" if start == prev else f"#{start}-#{prev}")
            start = cur
    return ", ".join(spans)


def band_line(frame: pd.DataFrame, spec: QuerySpec) -> str:
    """What the band is: the level of interval, over what, and of which quantity."""
    level = f"{spec.aggregate.confidence:.0%}"
    if spec.aggregate.seeds:
        return f"line: mean; band: {level} t-interval across runs"
    n = pd.to_numeric(frame["n"], errors="coerce")
    count = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
    if spec.aggregate.change:
        return (f"line: mean over {count} probe examples of each example's change; "
                f"band: {level} paired t-interval of that change")
    return f"line: mean over {count} probe examples; band: {level} t-interval of the level across examples"


def build(spec: QuerySpec, db=None) -> tuple[alt.TopLevelMixin, pd.DataFrame]:
    """The chart and the tidy frame behind it."""
    db = database(db)
    runs = select_runs(db, spec.select)
    c = spec.chart
    title = c.title or spec.name
    if c.kind == "entk":
        return _entk(spec, runs, db, title)
    frame = curves_frame(db, runs, spec.observe, spec.aggregate)
    if frame.empty:
        raise QueryError(f"the selected runs ({', '.join(f'#{r.id}' for r in runs)}) have no observations in the "
                         f"chosen stages/steps; widen observe[].stages or observe[].steps")
    if c.kind == "influence":
        subtitle = [line for line in (c.subtitle, seeds_line(runs, False)) if line]
        return influence_heatmap(frame, at=c.at, title=title, subtitle=subtitle, order=c.order), frame
    color, dash = c.color, c.dash
    if color not in frame.columns:
        frame = _add_config_column(frame, runs, color)
        color = color.removeprefix("config.")
    if dash is not None and dash not in frame.columns:
        frame = _add_config_column(frame, runs, dash, "chart.dash")
        dash = dash.removeprefix("config.")
    subtitle = [line for line in (c.subtitle, band_line(frame, spec) if c.band else None,
                                  seeds_line(runs, spec.aggregate.seeds)) if line]
    marks = None
    if spec.events is not None:  # the runs' alarms as vertical rules (ldreg.query.events)
        from ldreg.query.events import event_marks_frame, events_line
        from ldreg.store.events import find_events

        sets = [p.probe_set for p in spec.observe]
        observed = [] if None in sets else sets  # a pick of every probing set: every set's alarms
        found = [e for e in find_events([r.id for r in runs], db=db) if spec.events.keep(e, observed)]
        marks, left_out = event_marks_frame(found, frame, x=c.x, columns=(color, c.facet))
        subtitle.append(events_line(marks, left_out))
    chart = curves_chart(frame, color=color, facet=c.facet, x=c.x, y=c.y, band=c.band, columns=c.columns,
                         align=spec.aggregate.align, title=title, subtitle=subtitle, order=c.order,
                         width=c.width, height=c.height, dashes=dash, events=marks,
                         event_labels=spec.events.label if spec.events else True)
    return chart, frame


def _entk(spec: QuerySpec, runs: Sequence[RunInfo], db, title: str) -> tuple[alt.TopLevelMixin, pd.DataFrame]:
    pick = spec.observe[0]
    labels = run_labels(runs)
    panels, rows = [], []
    for run in runs[-MAX_ENTK_PANELS:]:
        entk = entk_matrix(db, run.id, step=spec.chart.at, probe_set=pick.probe_set,
                           response_type=(pick.response_types or [None])[0])
        sub = f"{labels[run.id]} · step {entk['step']} ({entk['stage']}) · {entk['response_type']} · {entk['meta'].get('mode', '')}"
        panels.append(entk_heatmap(entk, normalise=spec.chart.normalise, title=sub).to_dict())
        n = len(entk["example_ids"])
        for a in range(n):
            for b in range(n):
                rows.append({"run_id": run.id, "run": labels[run.id], "step": entk["step"], "stage": entk["stage"],
                             "example_i": entk["example_ids"][a], "example_j": entk["example_ids"][b],
                             "value": float(entk["gram"][a, b])})
    if len(panels) == 1:
        chart = entk_heatmap(entk, normalise=spec.chart.normalise, title=title, subtitle=sub)
    else:
        chart = _concat(panels, title)
    return chart, pd.DataFrame(rows)


def _concat(specs: list[dict], title: str) -> alt.TopLevelMixin:
    """Side by side configured heatmaps (their config moved to the top, where Vega-Lite wants it)."""
    config = specs[0].pop("config", {})
    for s in specs[1:]:
        s.pop("config", None)
    for s in specs:
        s.pop("$schema", None)
    return alt.HConcatChart.from_dict({"hconcat": specs, "config": config, "title": title,
                                       "resolve": {"scale": {"color": "independent"}}})


def run_query(spec_path: str | Path, out: str | Path | None = None, overrides: Sequence[str] = (), db=None) -> Path:
    """Run the query in ``spec_path`` and write its outputs; return the file (or folder) written.

    ``out``: a file with a supported suffix (.html, .png, .svg, .json, .csv, .parquet) writes that
    one; a folder (or a path without suffix) gets every format the spec lists, as ``<name>.<ext>``;
    ``None`` means ``./<name>/``. ``overrides``: ``key=value`` on the spec, and ``runs=12,15``.
    """
    spec = load(spec_path, overrides)
    out = Path(out) if out is not None else Path(spec.name)
    where = outputs.targets(out, spec.name, spec.formats)
    chart, frame = build(spec, db)
    outputs.write(chart, frame, where)
    writeback.wait()  # the summaries copied while drawing are stored, or the error is raised
    return next(iter(where.values())) if len(where) == 1 and out.suffix else out

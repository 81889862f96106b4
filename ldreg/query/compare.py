"""One page comparing any set of runs: what differs between them, then the standard charts.

``compare_runs(ids, out)`` writes a self-contained HTML page: a table of the config keys on which
the runs differ, the log-probability of every recorded response type (aligned where each run's
last stage begins, so SFT-then-DPO runs line up), the argmax confidence, and, when the runs
recorded them, the one-step influence heatmap and the eNTK Gram. Charts the runs have no data
for are left out and said so.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from ldreg.query import outputs, writeback
from ldreg.query import rows as summary_rows
from ldreg.query.charts.curves import curves_chart
from ldreg.query.charts.heatmaps import entk_heatmap, influence_heatmap
from ldreg.query.errors import QueryError
from ldreg.query.labels import differing_keys, flatten, run_labels
from ldreg.query.frame import curves_frame, entk_matrix, summaries
from ldreg.query.pipeline import Aggregation, Pick, recorded
from ldreg.query.select import RunInfo, select_runs
from ldreg.store.collections import OBSERVATIONS
from ldreg.store.connection import database


def differences_table(runs: Sequence[RunInfo]) -> str:
    """An HTML table: one row per differing config key, one column per run (id, name, status first)."""
    configs = [{"name": r.name, **r.config} for r in runs]
    keys = differing_keys(configs)
    flats = [flatten(c) for c in configs]
    head = "".join(f"<th>#{r.id}</th>" for r in runs)
    rows = [("status", [r.status for r in runs]),
            ("started", [r.start_time.strftime("%Y-%m-%d %H:%M") if r.start_time else "-" for r in runs])]
    rows += [(k, [f.get(k, "—") for f in flats]) for k in keys]
    body = "".join(f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + "</tr>"
                   for k, vals in rows)
    note = "" if keys else '<p class="note">The runs have identical configs.</p>'
    return f"<h2>How the runs differ</h2>{note}<table><tr><th>config key</th>{head}</tr>{body}</table>"


def _probe_set(have) -> str | None:
    return "train" if "train" in have.probe_sets else min(have.probe_sets) if have.probe_sets else None


def compare_runs(ids: Sequence[int], out: str | Path, db=None) -> Path:
    """Write the comparison page for runs ``ids`` to ``out`` (a .html file or a folder); return its path."""
    db = database(db)
    runs = select_runs(db, ids=list(ids))
    missing = sorted(set(ids) - {r.id for r in runs})
    out = Path(out)
    if out.suffix and out.suffix.lower() != ".html":
        raise QueryError(f"compare writes one HTML page; give a .html file or a folder, not {out.name!r}")
    path = out if out.suffix else out / f"compare-{'-'.join(str(r.id) for r in runs)}.html"
    blocks: list = [differences_table(runs)]
    notes = [f"no runs with ids {missing}"] if missing else []
    run_ids = [r.id for r in runs]
    align = "last" if all(len(r.config.get("stages") or []) > 1 for r in runs) else None

    probes = recorded(db, run_ids, "probe")
    if probes.quantities:
        fetched = {("probe", "logp_sum"): summaries(db, runs, "probe", "logp_sum", defer=True)[1]}
        probes = summary_rows.recorded_in(fetched["probe", "logp_sum"], probes)
        probe_set = _probe_set(probes)
        picks = [Pick(response_types=sorted(probes.response_types), probe_set=probe_set)]
        if "argmax_logp" in probes.quantities and "chosen" in probes.response_types:
            picks.append(Pick(quantity="argmax_logp", response_types=["chosen"], probe_set=probe_set))
        frame = curves_frame(db, runs, picks, Aggregation(align=align), check=False, fetched=fetched)
        if not frame.empty:
            blocks.append("<h2>Log-probability of each response type</h2>")
            blocks.append(curves_chart(frame, color="run", facet="series", align=align, columns=4, width=230, height=160,
                                       title=f"probe set {probe_set!r}", subtitle="mean over examples, 95% CI"))
    else:
        notes.append("no probe observations")

    if recorded(db, run_ids, "influence").quantities:
        frame = curves_frame(db, runs, [Pick(kind="influence", quantity="delta_logp", probe_set=None)], check=False)
        blocks.append("<h2>One-step influence</h2>")
        blocks.append(influence_heatmap(frame, at="first", title="Δ log π(y_o) after one step on y_u",
                                        subtitle="mean over examples, first recorded step"))
    else:
        notes.append("no influence observations")

    labels = run_labels(runs)
    entk_runs = [r for r in runs if db[OBSERVATIONS].count_documents({"run_id": r.id, "kind": "entk"}, limit=1)]
    for run in entk_runs[:4]:
        entk = entk_matrix(db, run.id)
        if not any("eNTK" in b for b in blocks if isinstance(b, str)):
            blocks.append("<h2>eNTK Gram between probe examples</h2>")
        blocks.append(entk_heatmap(entk, title=labels[run.id], subtitle=f"step {entk['step']} ({entk['stage']})"))
    if not entk_runs:
        notes.append("no eNTK observations")

    intro = "<p class=\"note\">Runs: " + "; ".join(html.escape(f"#{r.id} {r.name}: {labels[r.id]}") for r in runs) + "</p>"
    if notes:
        intro += "<p class=\"note\">Not shown: " + html.escape("; ".join(notes)) + ".</p>"
    title = "Comparing runs " + ", ".join(f"#{r.id}" for r in runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(outputs.page(title, blocks, intro))
    writeback.wait()  # the summaries copied while the page was drawn are stored, or the error is raised
    return path

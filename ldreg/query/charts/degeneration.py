"""Degeneration across training: how repetitive and how confident the model's own text becomes,
and the texts themselves, readable (kind-"generation" observations, ldreg.dynamics.degeneration)."""

from __future__ import annotations

import html
from typing import Sequence

import altair as alt
import pandas as pd

from ldreg.query.charts.common import configure, fit_width
from ldreg.store.collections import OBSERVATIONS

QUANTITY_TITLES = {"rep_4": "repeated 4-gram rate", "distinct_1": "distinct-1", "distinct_2": "distinct-2",
                   "entropy": "mean token entropy (nats)", "length": "length (tokens)"}


def generation_frame(db, run_ids: Sequence[int]) -> pd.DataFrame:
    """One row per stored continuation: run, step, stage, decoding, example, prompt, text and every quantity."""
    rows = []
    query = {"run_id": {"$in": [int(r) for r in run_ids]}, "kind": "generation"}
    for doc in db[OBSERVATIONS].find(query).sort([("run_id", 1), ("step", 1), ("response_type", 1)]):
        meta = doc.get("meta") or {}
        texts, prompts = meta.get("texts") or [], meta.get("prompts") or []
        for k, example_id in enumerate(doc["example_ids"]):
            row = {"run_id": doc["run_id"], "step": doc["step"], "examples_seen": doc["examples_seen"],
                   "stage": doc["stage"], "stage_index": doc["stage_index"], "decoding": doc["response_type"],
                   "example_id": example_id, "prompt": prompts[k] if k < len(prompts) else "",
                   "text": texts[k] if k < len(texts) else ""}
            row.update({q: vals[k] for q, vals in doc["values"].items()})
            rows.append(row)
    return pd.DataFrame(rows)


def degeneration_chart(frame: pd.DataFrame, *, quantities: Sequence[str] = ("rep_4", "distinct_2", "entropy", "length"),
                       title: str | None = None) -> alt.TopLevelMixin:
    """Mean of each quantity over continuations against examples seen, one panel per quantity,
    one line per run and decoding."""
    if frame.empty:
        raise ValueError("no generation observations to draw (set probing.generation in the spec)")
    keep = [q for q in quantities if q in frame]
    means = (frame.groupby(["run_id", "decoding", "examples_seen", "stage"], as_index=False)[keep].mean()
             .melt(id_vars=["run_id", "decoding", "examples_seen", "stage"], var_name="quantity", value_name="mean"))
    means["quantity"] = means["quantity"].map(QUANTITY_TITLES)
    means["series"] = "run #" + means["run_id"].astype(str) + " " + means["decoding"]
    width = fit_width(240, len(keep))
    chart = alt.Chart(means).mark_line(point=True).encode(
        x=alt.X("examples_seen:Q", title="examples seen"),
        y=alt.Y("mean:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title="run, decoding"),
        tooltip=["series", "stage", "examples_seen", "quantity", alt.Tooltip("mean:Q", format=".3g")],
    ).properties(width=width, height=180).facet(
        column=alt.Column("quantity:N", title=None, sort=[QUANTITY_TITLES[q] for q in keep])
    ).resolve_scale(y="independent")
    return configure(chart, title or "Does the model's own text become repetitive during training?",
                     "mean over probe prompts (and samples) at each generation probe")


def generations_html(frame: pd.DataFrame, *, max_rows: int = 200) -> str:
    """The texts, in a collapsed section: per run and step, each prompt's continuation and its numbers."""
    if frame.empty:
        return ""
    rows = []
    for _, r in frame.head(max_rows).iterrows():
        rows.append(f"<tr><td>#{r['run_id']}</td><td>{r['step']}</td><td>{html.escape(str(r['stage']))}</td>"
                    f"<td>{html.escape(str(r['decoding']))}</td><td>{html.escape(str(r['prompt'])[-160:])}</td>"
                    f"<td><pre style='white-space:pre-wrap;margin:0'>{html.escape(str(r['text']))}</pre>"
                    f"{'<i>(nothing: EOS first)</i>' if not str(r['text']) else ''}</td>"
                    f"<td>{_num(r.get('rep_4'))}</td><td>{_num(r.get('distinct_2'))}</td>"
                    f"<td>{_num(r.get('entropy'))}</td><td>{_num(r.get('length'), 0)}</td></tr>")
    more = (f"<p class='note'>The first {max_rows} of {len(frame)} continuations; every one is in the database "
            "(kind <code>generation</code>, <code>meta.texts</code>).</p>") if len(frame) > max_rows else ""
    return ("<details><summary>The generated texts (per run, step and decoding; the prompt's last 160 "
            "characters)</summary><table><tr><th>run</th><th>step</th><th>stage</th><th>decoding</th><th>prompt</th>"
            "<th>continuation</th><th>rep-4</th><th>distinct-2</th><th>entropy</th><th>length</th></tr>"
            f"{''.join(rows)}</table>{more}</details>")


def _num(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return ""
    return f"{x:.{digits}f}" if x == x else "n/a"

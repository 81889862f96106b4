"""The main job's report: one offline HTML page, each figure captioned with what the paper predicts
and the verdict computed, and the table of findings with their numbers.

Figures come from the same places a user's would: the simulation charts, and the shipped queries
in ``queries/`` run against this demo's run ids. A figure's title asks its question; its caption
gives the verdict the findings computed (``verdict_line``), never the title, so the two cannot
disagree. Under each curve figure, the numbers behind it (per run and type: the change over the
stage with n, SE and CI) and how to recompute them with plain pymongo. Nothing is fetched from a
network.
"""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ldreg.paper.findings import Finding, table_html

QUERIES = Path(__file__).resolve().parents[2] / "queries"


@dataclass
class Figure:
    title: str
    chart: Any
    predicts: str
    shows: str
    numbers: str = ""  # an HTML block: the numbers behind the figure


@dataclass
class Report:
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, title: str, chart: Any, predicts: str, shows: str, numbers: str = "") -> None:
        """``title``: the figure's question; ``shows``: the verdict computed (see ``verdict_line``),
        several joined by " | " (each becomes an item of a list)."""
        self.figures.append(Figure(title, chart, predicts, shows, numbers))

    def write(self, path: Path) -> Path:
        from ldreg.query.outputs import page

        blocks: list[Any] = ["<h2>Findings</h2>", table_html(self.findings)]
        for i, fig in enumerate(self.figures, start=1):
            blocks.append(f"<h2>Figure {i}. {html.escape(fig.title)}</h2>")
            blocks.append(fig.chart)
            lines = [line.strip() for line in fig.shows.split(" | ") if line.strip()]
            shown = (html.escape(lines[0]) if len(lines) == 1 else
                     "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
            blocks.append(f"<div class='note'><p><b>The paper predicts:</b> {html.escape(fig.predicts)}</p>"
                          f"<b>Verdict computed:</b> {shown}</div>")
            if fig.numbers:
                blocks.append(fig.numbers)
        blocks.append("<h2>Runs</h2>" + _runs_table(self.runs))
        blocks.append("<h2>Time</h2>" + _timings_table(self.timings))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(self.title, blocks, intro=self.intro))
        self.write_pngs(path.parent / f"{path.stem}-figures")
        return path

    def write_pngs(self, folder: Path) -> list[Path]:
        """Each figure also as a PNG (for slides and papers), beside the page."""
        from ldreg.query.charts import render

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, fig in enumerate(self.figures, start=1):
            target = folder / f"figure-{i}.png"
            render.save(fig.chart, target, "png", scale=1.5)
            written.append(target)
        return written


def query_chart(name: str, run_ids: Sequence[int], db, overrides: Sequence[str] = ()):
    """The chart of shipped query ``queries/NAME.yaml`` over exactly ``run_ids``."""
    return query_figure(name, run_ids, db, overrides)[0]


def query_figure(name: str, run_ids: Sequence[int], db, overrides: Sequence[str] = ()):
    """(chart, frame) of shipped query ``queries/NAME.yaml`` over exactly ``run_ids``."""
    from ldreg.query.execute import build
    from ldreg.query.spec import load

    spec = load(QUERIES / f"{name}.yaml", [f"runs={','.join(map(str, run_ids))}", *overrides])
    return build(spec, db)


# ----------------------------------------------------------------------------- captions from findings


def verdict_line(finding: Any) -> str:
    """"<name>: <verdict> — <evidence>" for a finding, whatever else its class carries.

    Reads only ``name``, ``evidence`` and ``verdict`` (or, failing that, ``held``), so the
    findings can change shape without breaking the captions.
    """
    verdict = getattr(finding, "verdict", "") or {True: "held", False: "did not hold"}.get(
        getattr(finding, "held", None), "not checked")
    evidence = getattr(finding, "evidence", "")
    return f"{getattr(finding, 'name', '?')}: {verdict}" + (f" — {evidence}" if evidence else "")


def verdicts(findings: Sequence[Any], key: str) -> str:
    """The verdict lines of every finding with this ``key`` (pooled first, then per seed, as given);
    a finding without keys matches by its name's start."""
    hits = [f for f in findings if getattr(f, "key", None) == key] or \
        [f for f in findings if str(getattr(f, "name", "")).startswith(key)]
    return " | ".join(verdict_line(f) for f in hits) or "not checked in this run"


# ----------------------------------------------------------------------------- the numbers behind a figure


def _f(x: Any, digits: int = 2) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:+.{digits}f}" if x == x else "n/a"


def change_table(frame: pd.DataFrame) -> str:
    """Per run and series, the change over each drawn stage: the curve's last point, with n, SE, CI.

    Only for frames of per-example changes (``aggregate.change``); each row says where to find
    its buckets, so a reader can recompute it with plain pymongo.
    """
    if frame.empty or "change" not in frame or frame["change"].isna().all():
        return ""
    rows = []
    keys = ["run_id", "run", "series", "response_type", "minus", "quantity", "stage_index"]
    data = frame.assign(minus=frame["minus"].astype(object).where(frame["minus"].notna(), ""))
    for key, line in data.groupby(keys, sort=False, dropna=False):
        line = line.sort_values("step")
        first, last = line.iloc[0], line.iloc[-1]
        n = float(last["n"])
        se = float(last["std"]) / n ** 0.5 if n > 1 else float("nan")
        run_id, run, series, rtype, minus, quantity, stage_index = key
        what = f"{rtype} − {minus}" if minus else rtype
        rows.append(f"<tr><td>#{run_id}</td><td>{html.escape(str(run))}</td><td>{html.escape(str(series))}</td>"
                    f"<td><code>{html.escape(what)}</code></td><td><code>{html.escape(str(quantity))}</code></td>"
                    f"<td>{stage_index}</td><td>{int(first['step'])} → {int(last['step'])}</td><td>{int(n)}</td>"
                    f"<td>{_f(last['mean'])}</td><td>{float(se):.2f}</td>"
                    f"<td>[{_f(last['ci_low'])}, {_f(last['ci_high'])}]</td></tr>")
    recipe = ("Each row: <code>db.observations.find_one({'run_id': R, 'kind': 'probe', 'probe_set': 'train', "
              "'stage_index': S, 'step': STEP, 'response_type': T})</code> at the two steps gives "
              "<code>example_ids</code> and <code>values.&lt;quantity&gt;</code>; per example id, the value at the "
              "last step minus the value at the first (for <code>a − b</code>, the difference of the two types at "
              "each step first); the mean, sample SD / sqrt(n), and mean ± t<sub>0.975, n−1</sub> SE of those "
              "changes are the row.")
    return ("<details><summary>The numbers behind this figure (change over the stage, per run and type)</summary>"
            "<table><tr><th>run</th><th>legend</th><th>series</th><th>type</th><th>quantity</th><th>stage</th>"
            "<th>steps</th><th>n</th><th>change (nats)</th><th>SE</th><th>95% CI</th></tr>"
            f"{''.join(rows)}</table><p class='note'>{recipe}</p></details>")


def influence_caption(frame: pd.DataFrame, update: str = "chosen") -> str:
    """The verdict of the one-step influence figure, computed: does an update on ``update`` raise
    ``update`` itself more than any other observed response, and which move most after it?"""
    data = frame[(frame["update_type"] == update)]
    if data.empty:
        return f"not checked: no influence observations of an update on {update!r}"
    data = data[data["step"] == data["step"].min()].sort_values("mean", ascending=False)
    label = dict(zip(data["response_type"], data["response_label"])) if "response_label" in data else {}
    own = data[data["response_type"] == update]
    ranked = ", ".join(f"{label.get(t, t)} {m:+.3g}" for t, m in zip(data["response_type"], data["mean"]))
    if own.empty:
        return f"not checked: {update!r} itself was not observed; mean changes: {ranked}"
    top = data.iloc[0]["response_type"] == update
    name = label.get(update, update)
    return (f"{'held' if top else 'did not hold'}: after one step on {name}, {name} moved "
            f"{float(own['mean'].iloc[0]):+.3g} nats (mean over {int(own['n'].iloc[0])} examples), "
            f"{'more than' if top else 'not more than'} every other response; by response: {ranked}.")


def ches_section(db, run_ids: Sequence[int], words: str) -> tuple[str, Any, str, str, str]:
    """(title, chart, predicts, shows, numbers) of the CHES figure (Razin et al.): CHES at the DPO
    stage's start against each pair's change of log π(y+) over it, pooled over ``run_ids``, with the
    correlations, their Fisher intervals and the verdict, all read from the database."""
    from ldreg.query.ches import VARIANTS, ches_chart, ches_frame, correlation
    from ldreg.store.collections import OBSERVATIONS

    frame = pd.concat([ches_frame(db, r) for r in run_ids], ignore_index=True)
    pooled = f"pooled over runs {', '.join(f'#{r}' for r in run_ids)}, a pair counted once per run"
    shows = [f"{VARIANTS[v]}: {correlation(frame[v], frame['d_chosen']).verdict} — "
             f"{correlation(frame[v], frame['d_chosen']).text()} ({pooled})" for v in VARIANTS]
    rows = []
    for run_id in run_ids:
        part = frame[frame["run"] == run_id]
        last = db[OBSERVATIONS].find_one({"run_id": run_id, "kind": "displacement"}, sort=[("step", -1)])
        share = (last or {}).get("meta", {}).get("displaced_share")
        cells = "".join(f"<td>{html.escape(correlation(part[v], part['d_chosen']).text())}</td>" for v in VARIANTS)
        rows.append(f"<tr><td>#{run_id}</td><td>{len(part)}</td>{cells}"
                    f"<td>{'n/a' if share is None else f'{share:.0%}'}</td></tr>")
    numbers = ("<details><summary>The numbers behind this figure (per run)</summary><table><tr><th>run</th><th>pairs</th>"
               + "".join(f"<th>{html.escape(VARIANTS[v])}</th>" for v in VARIANTS)
               + "<th>displaced at the stage's end</th></tr>" + "".join(rows) + "</table><p class='note'>CHES: "
               "<code>db.observations.find_one({'run_id': R, 'kind': 'ches', 'stage_index': S})</code>; the change of "
               "log π(y+): <code>values.logp_sum</code> of kind <code>probe</code>, type <code>chosen</code>, at the "
               "stage's first and last step; displaced share: <code>meta.displaced_share</code> of kind "
               "<code>displacement</code> at the last step. Intervals: Fisher z, 95%, SE sqrt(1.06/(n-3)) for "
               "Spearman.</p></details>")
    return (f"Does CHES predict which pairs DPO displaces? (Razin et al., ICLR 2025; {words})", ches_chart(frame),
            "Razin et al.: pairs whose two responses have more similar last-layer hidden states (a higher CHES, "
            "measured as DPO starts) see log π(y+) fall more during DPO, so CHES and the change of log π(y+) "
            "correlate negatively. Held: the Spearman interval lies below 0.", " | ".join(shows), numbers)


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


# ----------------------------------------------------------------------------- beyond the paper (issue 15)


def prediction_and_degeneration_figures(report: Report, db, run_ids: Sequence[int]) -> None:
    """The predicted-vs-measured one-step change and the degeneration probes of ``run_ids``, each added
    only where those runs stored them (``probing.influence.predict``, ``probing.generation``); every
    number is read from the database."""
    from ldreg.query.charts.degeneration import degeneration_chart, generation_frame, generations_html
    from ldreg.query.charts.prediction import prediction_chart, prediction_frame, prediction_line

    frame = prediction_frame(db, run_ids)
    if not frame.empty:
        report.add("How much of one step's change does the first-order term -η A K G explain? (Proposition 1)",
                   prediction_chart(frame),
                   "Δ log π = -η A K G + O(η²): for a small step the points lie on y = x, and the residual shrinks "
                   "four-fold when η halves.", prediction_line(frame))
    texts = generation_frame(db, run_ids)
    if not texts.empty:
        first, last = texts[texts["step"] == texts["step"].min()], texts[texts["step"] == texts["step"].max()]

        def mean(rows: pd.DataFrame, q: str, digits: int = 3) -> str:  # NaN: no continuation long enough
            return f"{rows[q].mean():.{digits}f}" if rows[q].notna().any() else "n/a"

        def empty(rows: pd.DataFrame) -> str:
            return f"{int((rows['length'] == 0).sum())} of {len(rows)} at step {int(rows['step'].iloc[0])}"

        shows = (f"from step {int(first['step'].iloc[0])} to step {int(last['step'].iloc[0])}: repeated 4-gram rate "
                 f"{mean(first, 'rep_4')} -> {mean(last, 'rep_4')}, distinct-2 {mean(first, 'distinct_2')} -> "
                 f"{mean(last, 'distinct_2')}, mean token entropy {mean(first, 'entropy', 2)} -> "
                 f"{mean(last, 'entropy', 2)} nats, length {mean(first, 'length', 1)} -> {mean(last, 'length', 1)} "
                 f"tokens (means over {len(first)} and {len(last)} continuations; empty, EOS first: {empty(first)}, "
                 f"{empty(last)}; runs {', '.join(f'#{r}' for r in sorted(set(texts['run_id'])))})")
        report.add("Does the model's own text become repetitive during training? (the paper's Section 4.2 and Figure 23, after Holtzman et al. 2020)",
                   degeneration_chart(texts), "long DPO makes outputs repetitive: the repeated-n-gram rate rises "
                   "and distinct-n and the token entropy fall.", shows, generations_html(texts))


def winrate_section(db, ext_ids: Sequence[int], base_ids: Sequence[int], words: str,
                    judge_model: str = "smollm2-135m", n: int | None = None) -> tuple[str, Any, str, str, str]:
    """(title, chart, predicts, shows, numbers) of the win-rate figure: extend's answers against the
    baseline's, seed by seed, judged by a local HF model in both orders, beside the judge's own check
    on the test pairs (how often it prefers y+ to y-, and how often its choice follows the order)."""
    import altair as alt

    from ldreg.judging.winrate import win_rate
    from ldreg.registry import _label, get_plugins

    registry = get_plugins().judges
    judge, r = registry.get("hf"), registry.registration("hf")
    result = win_rate(db, judge, judge.settings({"model": judge_model}), list(ext_ids), list(base_ids), n=n,
                      origin=_label(r.plugin, r.distribution, r.version))
    o, s = result.overall, result.sanity

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{x:.0%}"

    rows = [{"comparison": f"extend #{p['run_a']} vs baseline #{p['run_b']}", "outcome": k, "count": p[k]}
            for p in result.pairs for k in ("wins", "ties", "losses")]
    rows += [{"comparison": "judge check: y+ vs y- (test pairs)", "outcome": k, "count": s[v]}
             for k, v in (("wins", "agree"), ("ties", "undecided"), ("losses", "contradict"))]
    rows += [{"comparison": "judge check: y+ vs y- (test pairs)", "outcome": "ties",
              "count": round(s["flip_rate"] * s["n"])}]
    chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("comparison:N", title=None, sort=None),
        x=alt.X("sum(count):Q", title="prompts (each judged in both orders)"),
        color=alt.Color("outcome:N", sort=["wins", "ties", "losses"], title=["outcome", "(check: win = agrees", "with the data)"],
                        scale=alt.Scale(domain=["wins", "ties", "losses"], range=["#2a9d8f", "#bbbbbb", "#e76f51"])),
        tooltip=["comparison", "outcome", "sum(count):Q"],
    ).properties(width=420, height=30 * (len(result.pairs) + 1))
    interval = f"[{pct(max(o['ci95'][0], 0.0))}, {pct(min(o['ci95'][1], 1.0))}]" if o["ci95"][0] == o["ci95"][0] else "n/a"
    weak = (f"the judge, SmolLM2-135M-Instruct, is weak: on the test pairs' own y+ against y- it agreed with the "
            f"data set in both orders {pct(s['agreement'])} of {s['n']} pairs, contradicted it {pct(s['contradiction'])}, "
            f"and its choice followed the position rather than the text (the same letter in both orders) in "
            f"{pct(s['flip_rate'])}; every such flip is a tie here, so this win rate says little about quality")
    shows = (f"extend's answers against the baseline's: {o['wins']} wins, {o['ties']} ties, {o['losses']} losses over "
             f"{o['n']} prompts; win rate (a tie counts half) {pct(o['win_rate'])}, 95% interval {interval} over "
             f"{o['interval_over']}; position flips on the answers {pct(o['flip_rate'])} | {weak}")
    numbers = ("<details><summary>The numbers behind this figure</summary><table><tr><th>extend</th><th>baseline</th>"
               "<th>prompts</th><th>wins</th><th>ties</th><th>losses</th><th>win rate</th><th>flips</th></tr>"
               + "".join(f"<tr><td>#{p['run_a']}</td><td>#{p['run_b']}</td><td>{p['n']}</td><td>{p['wins']}</td>"
                         f"<td>{p['ties']}</td><td>{p['losses']}</td><td>{pct(p['win_rate'])}</td>"
                         f"<td>{pct(p['flip_rate'])}</td></tr>" for p in result.pairs)
               + f"</table><p class='note'>Each run's final model answered the same held-out prompts (spec "
               f"<code>answers:</code>; kind <code>answers</code> in <code>observations</code>); verdicts are in the "
               f"<code>judgements</code> collection. {result.judged} comparisons judged, {result.reused} reused. "
               f"Redo with <code>ldreg winrate {','.join(map(str, ext_ids))} {','.join(map(str, base_ids))}</code>; "
               f"docs/winrate.md says what the numbers mean.</p></details>")
    return (f"Is extend's final model preferred to the baseline's by a pairwise judge? (Table 1; {words})", chart,
            "the paper's Table 1: judged pairwise by a strong model, extend's responses win more often than the "
            "baseline's after DPO.", shows, numbers)

"""The loss comparison's statistics: which preference losses squeeze, by a rule fixed before the run.

Every loss of ``experiments/sweeps/quick-loss-comparison.yaml`` starts from the same SFT model of its
seed (the SFT stage is deterministic per seed and re-trained in every config); ``same_start`` checks
that, from the stored probes, instead of assuming it. The verdict per loss reuses the findings'
machinery (``ldreg.paper.findings``): paired per-example changes over the preference stage, a
t-interval over examples per seed, Holm over the rule's types, and ``findings.pool`` over seeds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ldreg.paper import findings as F
from ldreg.stats import Interval, t_interval

SQUEEZES, DOES_NOT_SQUEEZE = "squeezes", "does not squeeze"
PREFERENCE_STAGE = 1  # stage 0 is the shared SFT stage
# The rule, written before the sweep ran: over the preference stage (its first probe -> its last), the loss
# squeezes when log pi(y-) falls AND the argmax confidence on y+ rises, each clear of noise.
JUDGED = {"rejected": -1, "argmax_confidence": +1}
# Reported beside the verdict, not judged: each a 95% t-interval over examples per seed.
DESCRIBED = ("chosen", "chosen_rephrase_semantic", "chosen_rephrase_format", "rejected_rephrase_semantic",
             "rejected_rephrase_format")
COLUMNS = ("chosen", "rejected", "argmax_confidence", "chosen_rephrase_semantic", "chosen_rephrase_format",
           "rejected_rephrase_semantic", "rejected_rephrase_format")
RULE = ("Per loss, over the preference stage (its first probe, the SFT model, -> its last): the paired per-example "
        "change of log pi(y-) predicted to fall and of the argmax confidence on y+ (summed log p of the argmax "
        "tokens) predicted to rise, each a two-sided t-interval over the probe examples, the two Holm-corrected "
        "together at alpha 0.05 (summed nats). A seed squeezes when both intervals exclude 0 in the predicted "
        "direction, does not squeeze when one excludes 0 the other way, and is inconclusive otherwise. "
        + F.POOLING.replace("held", SQUEEZES).replace("did not hold", DOES_NOT_SQUEEZE)
        + " The changes of y+ and of the four rephrases are reported with 95% intervals over examples, not judged.")
_WORDS = {F.HELD: SQUEEZES, F.NOT_HELD: DOES_NOT_SQUEEZE}


def verdict_word(verdict: str) -> str:
    """The findings' held / did not hold, in this rule's words."""
    return _WORDS.get(verdict, verdict)


@dataclass
class LossResult:
    """One loss over the seeds: the pooled verdict, the seeds' findings, and every column's changes."""

    loss: str
    finding: F.Finding  # pooled (findings.pool); .per_seed holds each seed's
    changes: dict[str, dict[int, Interval]] = field(default_factory=dict)  # column -> seed -> change
    runs: dict[int, int] = field(default_factory=dict)  # seed -> run id

    @property
    def verdict(self) -> str:
        return verdict_word(self.finding.verdict)

    def as_dict(self) -> dict[str, Any]:
        def iv(x: Interval) -> dict[str, Any]:
            return {"n": x.n, "change": _num(x.mean), "se": _num(x.se), "ci": [_num(x.low), _num(x.high)],
                    "level": round(x.level, 6)}

        return {"loss": self.loss, "verdict": self.verdict, "runs": {str(s): r for s, r in self.runs.items()},
                "seed_verdicts": {str(f.seeds[0]): verdict_word(f.verdict) for f in self.finding.per_seed if f.seeds},
                "changes": {c: {str(s): iv(x) for s, x in by.items()} for c, by in self.changes.items()}}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def squeeze(curves: F.Curves, run: int, seed: int, loss: str, stage: int = PREFERENCE_STAGE
            ) -> tuple[F.Finding, dict[str, Interval]]:
    """One seed's verdict by ``RULE`` and the 95% change of every column (judged ones at Holm's level)."""
    pending: dict[str, list] = {}
    r = curves.get(run, "rejected", stage)
    a = curves.get(run, "chosen", stage, quantity="argmax")
    if r is not None:
        pending["rejected"] = [F._change(r, "start", "end", "start -> end", JUDGED["rejected"])]
    if a is not None:
        pending["argmax_confidence"] = [F._change(a, "start", "end", "start -> end", JUDGED["argmax_confidence"])]
    finding = F._finding(f"{loss}_squeeze", f"{loss}: squeezes", "log pi(y-) falls and the argmax confidence rises",
                         RULE, pending if len(pending) == len(JUDGED) else {}, [run], seed)
    changes = {t.response_type: t.tests[0].summed for t in finding.types}
    for rtype in DESCRIBED:
        b = curves.get(run, rtype, stage)
        if b is not None:
            start, end = b.window("start")[0], b.window("end")[0]
            changes[rtype] = t_interval(end - start)
    return finding, changes


def compare(db, runs: dict[tuple[str, int], int], seeds: Sequence[int]) -> list[LossResult]:
    """Every loss's result; ``runs`` maps (loss, seed) to a COMPLETED run of the comparison."""
    curves = F.Curves(db)
    out = []
    for loss in dict.fromkeys(loss for loss, _ in runs):
        per_seed, changes, ids = [], {}, {}
        for seed in seeds:
            run = runs.get((loss, seed))
            if run is None:
                continue
            finding, cols = squeeze(curves, run, seed, loss)
            per_seed.append(finding)
            ids[seed] = run
            for col, iv in cols.items():
                changes.setdefault(col, {})[seed] = iv
        if per_seed:
            out.append(LossResult(loss, F.pool(per_seed), changes, ids))
    return out


# ----------------------------------------------------------------------------- the same SFT start


@dataclass
class SameStart:
    """Per seed, how far apart the configs' preference-stage starts are (0.0: bit-identical)."""

    seeds: dict[int, float]  # seed -> the largest |difference| over configs, types, examples
    runs: dict[int, list[int]]
    values: int  # how many values were compared in all

    @property
    def identical(self) -> bool:
        return bool(self.seeds) and all(v == 0.0 for v in self.seeds.values())

    def text(self) -> str:
        if not self.seeds:
            return "not checked: no seed has two configs"
        per = "; ".join(f"seed {s}: {len(self.runs[s])} runs, largest difference {d:.3g} nats"
                        for s, d in self.seeds.items())
        return (f"{'identical' if self.identical else 'NOT identical'}: the probe values at the preference stage's "
                f"first probe (the SFT model) compared across every config of a seed, every response type and "
                f"example, log pi and the argmax confidence ({self.values} values; {per})")


def same_start(db, runs: dict[tuple[str, int], int], stage: int = PREFERENCE_STAGE) -> SameStart:
    """Compare, per seed, the first probe of the preference stage (the SFT model) of every config."""
    from ldreg.query.paired import example_matrix, line_buckets
    from ldreg.store.collections import OBSERVATIONS

    by_seed: dict[int, list[int]] = {}
    for (_, seed), run in runs.items():
        by_seed.setdefault(seed, []).append(run)
    worst: dict[int, float] = {}
    compared = 0
    for seed, ids in by_seed.items():
        if len(ids) < 2:
            continue
        types = sorted(db[OBSERVATIONS].distinct("response_type", {"run_id": ids[0], "kind": "probe",
                                                                      "stage_index": stage}))
        worst[seed] = 0.0
        for rtype in types:
            firsts = []
            for run in ids:
                docs = line_buckets(db, run, "probe", "train", rtype, stage, ("logp_sum", "argmax_logp"))
                firsts.append(docs[0] if docs else None)
            if any(d is None for d in firsts):
                worst[seed] = float("inf")  # a config without the probe cannot be shown to share the start
                continue
            present = [q for q in ("logp_sum", "argmax_logp") if all(q in d.get("values", {}) for d in firsts)]
            _, values = example_matrix(firsts, present)
            for matrix in values.values():
                diff = np.abs(matrix - matrix[0])
                compared += matrix.size
                worst[seed] = max(worst[seed], float(np.nanmax(diff)) if diff.size else 0.0)
    return SameStart(worst, {s: by_seed[s] for s in worst}, compared)


# ----------------------------------------------------------------------------- the report's table


def _cell(by_seed: dict[int, Interval]) -> str:
    parts = [f"s{s}: {F._f(x.mean)} [{F._f(x.low)}, {F._f(x.high)}]" for s, x in by_seed.items()]
    return "<br>".join(html.escape(p) for p in parts) or "n/a"


def table_html(results: Sequence[LossResult], params: dict[str, str] | None = None) -> str:
    """One row per loss: the changes of every column per seed with intervals, the verdict, the parameters."""
    params = params or {}
    head = "".join(f"<th>Δ {html.escape(F.label(c))}</th>" for c in COLUMNS)
    rows = []
    for r in results:
        seeds = ", ".join(f"s{f.seeds[0]} {verdict_word(f.verdict)}" for f in r.finding.per_seed if f.seeds)
        cells = "".join(f"<td>{_cell(r.changes.get(c, {}))}</td>" for c in COLUMNS)
        rows.append(f"<tr class='{r.finding.verdict.replace(' ', '-')}'><td><code>{html.escape(r.loss)}</code></td>"
                    f"<td><b>{html.escape(r.verdict)}</b><br><span class='note'>{html.escape(seeds)}</span></td>"
                    f"{cells}<td>{html.escape(params.get(r.loss, ''))}</td>"
                    f"<td>{', '.join(f'#{x}' for x in r.runs.values())}</td></tr>")
    return ("<table class='findings'><thead><tr><th>loss</th><th>verdict (per seed)</th>"
            f"{head}<th>parameters (defaults, untuned)</th><th>runs</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table><p class='note'>Each cell: per seed (s1, s2, ...), the mean paired change over the preference "
            "stage in summed nats [interval]; y- and the argmax confidence at the Holm-corrected level of the rule, "
            f"the others at 95%. <b>Rule:</b> {html.escape(RULE)}</p>")


def summary(results: Sequence[LossResult]) -> str:
    """The verdicts in one line each kind: which losses squeeze, which do not, which are inconclusive."""
    groups: dict[str, list[str]] = {}
    for r in results:
        groups.setdefault(r.verdict, []).append(r.loss)
    order = [SQUEEZES, DOES_NOT_SQUEEZE, F.INCONCLUSIVE, F.NOT_CHECKED]
    return " | ".join(f"{v} ({len(groups[v])} of {len(results)}): {', '.join(groups[v])}" for v in order if v in groups)


def change_chart(results: Sequence[LossResult]):
    """Per probe panel, each loss's change over the preference stage per seed: a dot and its interval,
    coloured by the loss's verdict, so 22 losses stay readable where 22 curves would overlap."""
    import altair as alt
    import pandas as pd

    rows = [{"loss": r.loss, "verdict": r.verdict, "probe": F.label(col), "seed": f"seed {seed}",
             "change": iv.mean, "low": iv.low, "high": iv.high}
            for r in results for col in COLUMNS for seed, iv in r.changes.get(col, {}).items()
            if np.isfinite(iv.mean)]
    data = pd.DataFrame(rows)
    if data.empty:
        return alt.Chart(pd.DataFrame({"note": ["no changes stored"]})).mark_text().encode(text="note")
    order = [r.loss for r in results]
    y = alt.Y("loss:N", sort=order, title=None)
    offset = alt.YOffset("seed:N", title="seed")
    colour = alt.Color("verdict:N", title="verdict", scale=alt.Scale(
        domain=[SQUEEZES, DOES_NOT_SQUEEZE, F.INCONCLUSIVE], range=["#d62728", "#1f77b4", "#7f7f7f"]))
    base = alt.Chart().encode(y=y, yOffset=offset, color=colour)
    rule = base.mark_rule().encode(x=alt.X("low:Q", title="change since the preference stage began (nats)"),
                                   x2="high:Q")
    dot = base.mark_point(filled=True, size=30).encode(
        x="change:Q", tooltip=["loss", "probe", "seed", alt.Tooltip("change:Q", format="+.2f"),
                               alt.Tooltip("low:Q", format="+.2f"), alt.Tooltip("high:Q", format="+.2f")])
    zero = alt.Chart().mark_rule(color="#444", strokeDash=[3, 3]).encode(x=alt.datum(0))
    return alt.layer(rule, dot, zero, data=data).properties(width=200, height=alt.Step(7)).facet(
        facet=alt.Facet("probe:N", sort=[F.label(c) for c in COLUMNS], title=None), columns=4).resolve_scale(
        x="independent").properties(title="Each loss's change over the preference stage, per seed, with its interval")

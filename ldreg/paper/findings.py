"""The paper's qualitative findings (docs/math.md §8) as pre-registered rules with a noise model.

Each finding is a rule written here before it is applied (and printed with its result): which
response types, which window of which stage, which direction, and in which unit the verdict is
read. The quantity is always a PAIRED per-example change, read from the observation buckets (one
value per probe example), in summed nats and per token; the test is a two-sided paired
t-interval over examples; the types of one finding are corrected together by Holm's procedure
(``ldreg.stats``). Every type gets its own verdict (held / did not hold / inconclusive) with its
n, start, end, change, SE and interval; a finding held only when every type held. Nothing here
chooses seeds: a finding is checked on the runs it is given, and ``pool`` combines seeds by a
rule stated in ``POOLING``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ldreg.query.paired import common_examples, example_matrix, line_buckets
from ldreg.stats import Interval, holm_levels, t_interval

ALPHA = 0.05
HELD, NOT_HELD, INCONCLUSIVE, NOT_CHECKED = "held", "did not hold", "inconclusive", "not checked"
PEAK_WINDOW = 1 / 3  # "rise then fall": the peak window is every probe after the start in the first third

# The paper's Figure 3, first panel (Sec. 4.1): y-, the two rephrases of y+, y+ of a TEST prompt and a
# random English sentence "are all slightly increased at the beginning of training, and then gradually
# decrease". The rephrases of y- are checked alongside (the paper's Sec. 4.1 names y- and the rephrases together).
RISE_THEN_FALL = ("rejected", "chosen_rephrase_semantic", "chosen_rephrase_format", "irrelevant_test",
                  "random_sentence", "rejected_rephrase_semantic", "rejected_rephrase_format")
PERMUTATIONS = ("chosen_permuted", "random_permuted")
# Third panel: y+ of another TRAINING prompt keeps rising, more slowly than y+ (hallucination).
OTHER_PROMPTS = ("irrelevant_train",)
EXTEND_TYPES = ("chosen", "rejected", "irrelevant_train", "random_sentence")

METHOD = (f"Per seed, for every probe example (the train probing set), the paired change of log pi over the "
          f"rule's window, in summed nats and per token (the same change divided by the response's tokens); a "
          f"two-sided paired t-interval over examples. The types of one finding are corrected together with "
          f"Holm's step-down procedure at alpha {ALPHA}; each interval is drawn at the confidence Holm judged it at "
          f"(so it excludes 0 exactly when Holm rejects). A type held when every interval of its rule excludes 0 in "
          f"the predicted direction, did not hold when one excludes 0 in the other direction, and is inconclusive "
          f"otherwise. A finding held when every type held, did not hold when any type did not hold, and is "
          f"inconclusive otherwise: no majority votes.")
POOLING = ("Over seeds: with 3 or more seeds, the same test on the seeds' mean changes (seed as a random effect: a "
           "t-interval over seed means, k-1 degrees of freedom), Holm-corrected over the types; with fewer seeds, a "
           "type held (did not hold) only when it held (did not hold) in every seed, and is inconclusive otherwise.")


# ----------------------------------------------------------------------------- results


@dataclass
class Test:
    """One paired comparison over examples: the mean level at ``start`` and ``end``, and the change."""

    label: str  # which window, e.g. "start -> end of stage 'sft'"
    predicted: int  # +1: predicted to rise; -1: to fall
    unit: str  # the unit the verdict reads: "nats" or "nats/token"
    start: float  # mean level (summed nats) where the change starts; for a contrast, the first curve
    end: float
    summed: Interval  # the per-example change in summed nats, at the type's corrected level
    per_token: Interval
    start_label: str = "start"
    end_label: str = "end"

    @property
    def judged(self) -> Interval:
        return self.per_token if self.unit == "nats/token" else self.summed

    def as_dict(self) -> dict[str, Any]:
        def iv(x: Interval) -> dict[str, Any]:
            return {"change": _num(x.mean), "se": _num(x.se), "ci": [_num(x.low), _num(x.high)], "p": _num(x.p)}

        return {"test": self.label, "predicted": "rise" if self.predicted > 0 else "fall", "verdict_unit": self.unit,
                "n": self.summed.n, "start": _num(self.start), "end": _num(self.end),
                "start_is": self.start_label, "end_is": self.end_label, "level": round(self.summed.level, 6),
                **iv(self.summed), "per_token": iv(self.per_token)}


@dataclass
class TypeResult:
    response_type: str
    tests: list[Test]
    verdict: str
    level: float  # confidence of the intervals (1 - Holm's level for this type)
    p: float  # the type's p-value: the largest of its tests' (every test must hold)
    seed_verdicts: dict[int, str] = field(default_factory=dict)  # pooled results only

    def as_dict(self) -> dict[str, Any]:
        out = {"response_type": self.response_type, "verdict": self.verdict, "level": round(self.level, 6),
               "p": _num(self.p), "tests": [t.as_dict() for t in self.tests]}
        if self.seed_verdicts:
            out["seed_verdicts"] = {str(k): v for k, v in self.seed_verdicts.items()}
        return out


@dataclass
class Finding:
    name: str
    prediction: str
    held: bool | None  # True: held; False: did not hold; None: inconclusive or not checked
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""  # held / did not hold / inconclusive / not checked
    rule: str = ""
    key: str = ""
    seeds: list[int] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    types: list[TypeResult] = field(default_factory=list)
    per_seed: list["Finding"] = field(default_factory=list)  # pooled findings: the seeds' own

    def __post_init__(self):
        if not self.verdict:
            self.verdict = {True: HELD, False: NOT_HELD, None: NOT_CHECKED}[self.held]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "prediction": self.prediction, "rule": self.rule,
                "verdict": self.verdict, "seeds": list(self.seeds), "runs": list(self.runs),
                "types": [t.as_dict() for t in self.types]}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


# ----------------------------------------------------------------------------- per-example curves


@dataclass
class Block:
    """One run's probes of one response type in one stage: probes x examples, in both units."""

    frac: np.ndarray  # each probe's position in the stage: 0 at its first probe, 1 at its last
    ids: np.ndarray  # example ids (columns)
    summed: np.ndarray  # probes x examples, summed nats
    per_token: np.ndarray  # probes x examples, nats per token

    def minus(self, other: "Block") -> "Block":
        """Per example, this curve minus ``other``'s (same probes; the examples both have)."""
        common, (a, b) = common_examples(self.ids, other.ids)
        if len(self.frac) != len(other.frac):
            raise ValueError("curves with different probe schedules")
        return Block(self.frac, common, self.summed[:, a] - other.summed[:, b],
                     self.per_token[:, a] - other.per_token[:, b])

    def window(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-example values at ``start``, ``end``, or averaged over the ``peak`` window."""
        if which == "start":
            rows = [0]
        elif which == "end":
            rows = [len(self.frac) - 1]
        else:
            rows = [i for i, f in enumerate(self.frac) if 0 < f <= PEAK_WINDOW + 1e-9]
            if not rows:
                return np.full(len(self.ids), np.nan), np.full(len(self.ids), np.nan)
        return self.summed[rows].mean(axis=0), self.per_token[rows].mean(axis=0)


class Curves:
    """Per-example probe values of stored runs, read once each and paired by the query layer."""

    def __init__(self, db, probe_set: str = "train"):
        self.db, self.probe_set = db, probe_set
        self._cache: dict[tuple, Block | None] = {}

    def get(self, run_id: int, rtype: str, stage_index: int, quantity: str = "logp") -> Block | None:
        """``quantity``: ``logp`` (log pi of the response) or ``argmax`` (log p of the argmax tokens)."""
        key = (run_id, rtype, stage_index, quantity)
        if key not in self._cache:
            self._cache[key] = self._read(*key)
        return self._cache[key]

    def _read(self, run_id: int, rtype: str, stage_index: int, quantity: str) -> Block | None:
        names = ("logp_sum", "logp_mean") if quantity == "logp" else ("argmax_logp", "n_tokens")
        docs = line_buckets(self.db, run_id, "probe", self.probe_set, rtype, stage_index, names)
        if len(docs) < 2:
            return None
        ids, rows = example_matrix(docs, names)
        first, second = rows[names[0]], rows[names[1]]
        seen = np.asarray([d["examples_seen"] for d in docs], dtype=float)
        span = seen[-1] - seen[0]
        frac = (seen - seen[0]) / span if span > 0 else np.linspace(0, 1, len(seen))
        return Block(frac, ids, first, first / second if quantity == "argmax" else second)


# ----------------------------------------------------------------------------- judging


@dataclass
class _Pending:
    """A test before correction: the raw per-example (or per-seed) changes."""

    label: str
    predicted: int
    unit: str
    start: float
    end: float
    d_summed: np.ndarray
    d_per_token: np.ndarray
    start_label: str = "start"
    end_label: str = "end"

    def p(self) -> float:
        return t_interval(self.d_per_token if self.unit == "nats/token" else self.d_summed).p


def _change(block: Block, a: str, b: str, label: str, predicted: int, unit: str = "nats") -> _Pending:
    sa, ta = block.window(a)
    sb, tb = block.window(b)
    return _Pending(label, predicted, unit, float(np.nanmean(sa)), float(np.nanmean(sb)), sb - sa, tb - ta, a, b)


def _judge(pending: dict[str, list[_Pending]]) -> list[TypeResult]:
    """Holm over the types; each type's intervals at its level; its verdict from its intervals."""
    names = list(pending)
    ps = [max((t.p() for t in pending[n]), default=np.nan) if all(np.isfinite(t.p()) for t in pending[n])
          else np.nan for n in names]
    levels = holm_levels(ps, ALPHA)
    out = []
    for name, p, level in zip(names, ps, levels):
        tests = [Test(t.label, t.predicted, t.unit, t.start, t.end, t_interval(t.d_summed, 1 - level),
                      t_interval(t.d_per_token, 1 - level), t.start_label, t.end_label) for t in pending[name]]
        signs = [t.judged.excludes_zero() * t.predicted for t in tests]
        verdict = HELD if signs and all(s == 1 for s in signs) else NOT_HELD if any(s == -1 for s in signs) else INCONCLUSIVE
        out.append(TypeResult(name, tests, verdict, 1 - level, p))
    return out


def _overall(types: Sequence[TypeResult]) -> str:
    if not types:
        return NOT_CHECKED
    verdicts = [t.verdict for t in types]
    return HELD if all(v == HELD for v in verdicts) else NOT_HELD if NOT_HELD in verdicts else INCONCLUSIVE


def _evidence(types: Sequence[TypeResult]) -> str:
    parts = []
    for t in types:
        tests = ", ".join(f"{x.label.split(':')[0]} {_f(x.judged.mean)} [{_f(x.judged.low)}, {_f(x.judged.high)}]"
                          f"{'/token' if x.unit == 'nats/token' else ''}" for x in t.tests)
        parts.append(f"{label(t.response_type)}: {tests} ({t.verdict}, {t.level:.1%} CI)")
    return "; ".join(parts) or "no probes"


def _f(x: float) -> str:
    return f"{x:+.2f}" if x is not None and np.isfinite(x) else "n/a"


# The response-type plugins' display labels (ResponseGenerator.label), so that the findings, the
# figures' panels and their captions use one vocabulary; tests/test_findings.py checks they agree.
LABELS = {"chosen": "y+", "rejected": "y-", "chosen_rephrase_semantic": "y+ rephrase (semantic)",
          "chosen_rephrase_format": "y+ rephrase (format)", "rejected_rephrase_semantic": "y- rephrase (semantic)",
          "rejected_rephrase_format": "y- rephrase (format)", "irrelevant_train": "y+ of another train prompt",
          "irrelevant_test": "y+ of a test prompt", "random_sentence": "random sentence",
          "chosen_permuted": "permuted y+", "random_permuted": "permuted random sentence",
          "margin": "margin (y+ - y-)", "argmax_confidence": "argmax confidence"}


def label(rtype: str) -> str:
    return LABELS.get(rtype, rtype)


def _finding(key: str, name: str, prediction: str, rule: str, pending: dict[str, list[_Pending]],
             runs: Sequence[int], seed: int | None) -> Finding:
    types = _judge(pending)
    verdict = _overall(types)
    return Finding(name, prediction, {HELD: True, NOT_HELD: False}.get(verdict), _evidence(types),
                   verdict=verdict, rule=rule, key=key, seeds=[] if seed is None else [seed], runs=list(runs),
                   types=types)


# ----------------------------------------------------------------------------- the findings


RULES = {
    "sft_raises_chosen": "y+: start -> end of the SFT stage, predicted to rise (verdict in summed nats).",
    "rise_then_fall": (
        "Each of " + ", ".join(label(t) for t in RISE_THEN_FALL) + ": a rise from the start to the peak window "
        "(the mean of the probes after the start within the first third of the SFT stage's examples) and a fall "
        "from the peak window to the end, each clear of noise (verdict in summed nats; the type's p is the larger "
        "of the two). The window is fixed, not where a maximum lands; it was chosen after issue 10 reported the "
        "peaks at the first or second of 7 probes (default scale, seeds 0 and 1)."),
    "permutations_fall": "y+ permuted and random sentence permuted: start -> end of SFT, predicted to fall (summed nats).",
    "other_prompts_rise_slower": (
        "y+ of other training prompts: start -> end of SFT predicted to rise (summed nats), and y+'s change minus "
        "theirs predicted > 0 judged PER TOKEN: in summed nats a shorter response changes less, so the summed gap "
        "alone is a length effect (issue 10, item 3). Both must hold."),
    "dpo_squeeze": (
        "During the preference stage, start -> end: y+ falls, y- falls, the margin (per example, log pi(y+) - "
        "log pi(y-)) rises, and the argmax confidence on y+ (summed log p of the argmax tokens) rises; four "
        "types, corrected together (summed nats)."),
    "extend_slows_decay": (
        "For " + ", ".join(label(t) for t in EXTEND_TYPES) + ": per example, the area between extend's and the "
        "baseline's curves of change from the DPO start, averaged over the DPO stage (trapezoids over the stage's "
        "fraction), predicted > 0 (extend decays more slowly) with a CI over examples; the whole curve, not the "
        "last point. Both runs share the seed, so the probe examples are the same (summed nats)."),
}
NAMES = {
    "sft_raises_chosen": ("SFT raises y+", "log pi(y+) rises steadily during SFT"),
    "rise_then_fall": ("y- and rephrases rise then fall",
                       "during SFT, y-, the rephrases, y+ of test prompts and random sentences first rise, then fall"),
    "permutations_fall": ("permutations fall", "word permutations fall from the start of SFT"),
    "other_prompts_rise_slower": ("y+ of other prompts rises, more slowly than y+",
                                  "y+ of other training prompts keeps rising during SFT, more slowly than y+"),
    "dpo_squeeze": ("DPO lowers y+ and y-, argmax confidence rises",
                    "off-policy DPO: margin up, log pi(y+) and log pi(y-) both down, argmax confidence up"),
    "extend_slows_decay": ("extend slows the decay during DPO",
                           "after extend (SFT on y+ and y-), every probe decays more slowly during DPO"),
}


def _make(key: str, pending: dict[str, list[_Pending]], runs: Sequence[int], seed: int | None) -> Finding:
    name, prediction = NAMES[key]
    return _finding(key, name, prediction, RULES[key], pending, runs, seed)


def sft_raises_chosen(curves: Curves, run: int, seed: int | None = None, stage: int = 0) -> Finding:
    b = curves.get(run, "chosen", stage)
    pending = {"chosen": [_change(b, "start", "end", "start -> end", +1)]} if b else {}
    return _make("sft_raises_chosen", pending, [run], seed)


def rise_then_fall(curves: Curves, run: int, seed: int | None = None, stage: int = 0) -> Finding:
    pending = {}
    for rtype in RISE_THEN_FALL:
        b = curves.get(run, rtype, stage)
        if b is None or not np.isfinite(b.window("peak")[0]).any():
            continue
        pending[rtype] = [_change(b, "start", "peak", "rise: start -> peak window", +1),
                          _change(b, "peak", "end", "fall: peak window -> end", -1)]
    return _make("rise_then_fall", pending, [run], seed)


def permutations_fall(curves: Curves, run: int, seed: int | None = None, stage: int = 0) -> Finding:
    pending = {t: [_change(b, "start", "end", "start -> end", -1)]
               for t in PERMUTATIONS if (b := curves.get(run, t, stage)) is not None}
    return _make("permutations_fall", pending, [run], seed)


def other_prompts_rise_slower(curves: Curves, run: int, seed: int | None = None, stage: int = 0) -> Finding:
    chosen = curves.get(run, "chosen", stage)
    pending = {}
    for rtype in OTHER_PROMPTS:
        b = curves.get(run, rtype, stage)
        if b is None or chosen is None:
            continue
        gap = chosen.minus(b)
        pending[rtype] = [_change(b, "start", "end", "rises: start -> end", +1),
                          _change(gap, "start", "end", "slower: y+'s change minus theirs", +1, unit="nats/token")]
        pending[rtype][1].start_label, pending[rtype][1].end_label = "gap at start", "gap at end"
    return _make("other_prompts_rise_slower", pending, [run], seed)


def dpo_squeeze(curves: Curves, run: int, stage: int = 1, seed: int | None = None) -> Finding:
    c, r = curves.get(run, "chosen", stage), curves.get(run, "rejected", stage)
    pending: dict[str, list[_Pending]] = {}
    if c is not None and r is not None:
        pending["chosen"] = [_change(c, "start", "end", "start -> end", -1)]
        pending["rejected"] = [_change(r, "start", "end", "start -> end", -1)]
        pending["margin"] = [_change(c.minus(r), "start", "end", "start -> end", +1)]
        a = curves.get(run, "chosen", stage, quantity="argmax")
        if a is not None:
            pending["argmax_confidence"] = [_change(a, "start", "end", "start -> end", +1)]
    return _make("dpo_squeeze", pending, [run], seed)


def _area(block: Block, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the mean over the stage of the change from its start (trapezoids on ``grid``)."""
    out = []
    for values in (block.summed, block.per_token):
        change = values - values[0]
        on_grid = np.vstack([np.interp(grid, block.frac, change[:, j]) for j in range(change.shape[1])]).T
        out.append(np.trapezoid(on_grid, grid, axis=0) / (grid[-1] - grid[0]))
    return out[0], out[1]


def extend_slows_decay(curves: Curves, baseline: int, extend: int, stage: int = 1, seed: int | None = None,
                       types: Sequence[str] = EXTEND_TYPES) -> Finding:
    pending = {}
    for rtype in types:
        b, e = curves.get(baseline, rtype, stage), curves.get(extend, rtype, stage)
        if b is None or e is None:
            continue
        common, (ib, ie) = common_examples(b.ids, e.ids)
        if len(common) < 2:
            continue
        grid = np.union1d(b.frac, e.frac)
        bs, bt = _area(Block(b.frac, common, b.summed[:, ib], b.per_token[:, ib]), grid)
        es, et = _area(Block(e.frac, common, e.summed[:, ie], e.per_token[:, ie]), grid)
        pending[rtype] = [_Pending("area between curves (extend - baseline), mean over the stage", +1, "nats",
                                   float(bs.mean()), float(es.mean()), es - bs, et - bt,
                                   "baseline's mean change", "extend's mean change")]
    return _make("extend_slows_decay", pending, [baseline, extend], seed)


# ----------------------------------------------------------------------------- over seeds


def pool(per_seed: Sequence[Finding]) -> Finding:
    """One finding over seeds, by the rule in ``POOLING``; it keeps the seeds' own findings."""
    first = per_seed[0]
    seeds = [s for f in per_seed for s in f.seeds]
    runs = [r for f in per_seed for r in f.runs]
    names = list(dict.fromkeys(t.response_type for f in per_seed for t in f.types))
    if len(per_seed) >= 3:
        pending = {}
        for name in names:
            rows = [next((t for t in f.types if t.response_type == name), None) for f in per_seed]
            if any(r is None for r in rows):
                continue
            pending[name] = [
                _Pending(f"{x.label} (seed means)", x.predicted, x.unit,
                         float(np.mean([r.tests[i].start for r in rows])), float(np.mean([r.tests[i].end for r in rows])),
                         np.array([r.tests[i].summed.mean for r in rows]),
                         np.array([r.tests[i].per_token.mean for r in rows]), x.start_label, x.end_label)
                for i, x in enumerate(rows[0].tests)]
        types = _judge(pending)
    else:
        types = []
        for name in names:
            verdicts = [next((t.verdict for t in f.types if t.response_type == name), NOT_CHECKED) for f in per_seed]
            v = HELD if all(x == HELD for x in verdicts) else NOT_HELD if all(x == NOT_HELD for x in verdicts) else INCONCLUSIVE
            types.append(TypeResult(name, [], v, float("nan"), float("nan")))
    for t in types:
        t.seed_verdicts = {f.seeds[0]: next((x.verdict for x in f.types if x.response_type == t.response_type),
                                            NOT_CHECKED) for f in per_seed if f.seeds}
    verdict = _overall(types)
    evidence = (_evidence(types) if len(per_seed) >= 3 else
                "; ".join(f"{label(t.response_type)}: {t.verdict} (" + ", ".join(
                    f"seed {s} {v}" for s, v in t.seed_verdicts.items()) + ")" for t in types))
    return Finding(f"{first.name} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", first.prediction,
                   {HELD: True, NOT_HELD: False}.get(verdict), evidence, verdict=verdict,
                   rule=first.rule + " " + POOLING, key=first.key, seeds=seeds, runs=runs, types=types,
                   per_seed=list(per_seed))


# ----------------------------------------------------------------------------- tables


def table_html(findings: Sequence[Finding]) -> str:
    """The findings as an HTML table (for the report): the verdict, the rule, and every type's numbers."""
    rows = []
    for f in findings:
        cls = f.verdict.replace(" ", "-")
        detail = ""
        if f.types and any(t.tests for t in f.types):
            cells = "".join(
                f"<tr><td>{html.escape(label(t.response_type))}</td><td>{html.escape(x.label)}</td><td>{x.summed.n}</td>"
                f"<td>{_f(x.start)}</td><td>{_f(x.end)}</td><td>{_f(x.summed.mean)}</td><td>{x.summed.se:.2f}</td>"
                f"<td>[{_f(x.summed.low)}, {_f(x.summed.high)}]</td>"
                f"<td>{_f(x.per_token.mean)} [{_f(x.per_token.low)}, {_f(x.per_token.high)}]</td>"
                f"<td>{t.level:.1%}</td><td>{t.verdict}</td></tr>" for t in f.types for x in t.tests)
            detail = ("<table class='types'><tr><th>type</th><th>test</th><th>n</th><th>start</th><th>end</th>"
                      "<th>change (nats)</th><th>SE</th><th>CI</th><th>per token: change [CI]</th><th>CI level</th>"
                      f"<th>verdict</th></tr>{cells}</table>")
        rule = f"<p class='note'><b>Rule:</b> {html.escape(f.rule)}</p>" if f.rule else ""
        rows.append(f"<tr class='{cls}'><td>{html.escape(f.name)}</td><td>{html.escape(f.prediction)}</td>"
                    f"<td><b>{f.verdict}</b></td><td>{html.escape(f.evidence)}{rule}{detail}</td></tr>")
    return ("<table class='findings'><thead><tr><th>finding</th><th>the paper predicts</th><th>verdict</th>"
            f"<th>numbers</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


CHECKS: dict[str, Callable[..., Finding]] = {
    "sft_raises_chosen": sft_raises_chosen, "rise_then_fall": rise_then_fall,
    "permutations_fall": permutations_fall, "other_prompts_rise_slower": other_prompts_rise_slower,
}

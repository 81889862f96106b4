"""The paper's qualitative findings (MATH.md §5), checked with numbers from stored observations.

Each finding is a small function of a tidy frame of probe means (one row per run, stage, step and
response type) that returns a ``Finding``: what the paper predicts, whether it held, and the
numbers that say so. Nothing here picks seeds: a finding is checked on every run it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

# The paper's Figure 3, first panel (Sec. 4.1): y-, the two rephrases of y+, y+ of a TEST prompt and a
# random English sentence "are all slightly increased at the beginning of training, and then gradually
# decrease". The rephrases of y- are checked alongside (MATH.md §5: "y- and the rephrases").
RISE_THEN_FALL = ("rejected", "chosen_rephrase_semantic", "chosen_rephrase_format", "irrelevant_test",
                  "random_sentence", "rejected_rephrase_semantic", "rejected_rephrase_format")
PERMUTATIONS = ("chosen_permuted", "random_permuted")
# Third panel: y+ of another TRAINING prompt keeps rising, more slowly than y+ (hallucination).
OTHER_PROMPTS = ("irrelevant_train",)


@dataclass
class Finding:
    name: str
    prediction: str
    held: bool | None  # None: the runs lack what the check needs
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)


def probe_means(db, run_ids: Sequence[int], probe_set: str = "train", quantity: str = "logp_sum") -> pd.DataFrame:
    """Mean over examples of ``quantity`` per (run, stage, step, type), averaged in the database."""
    rows = db.observations.aggregate([
        {"$match": {"run_id": {"$in": list(run_ids)}, "kind": "probe", "probe_set": probe_set}},
        {"$project": {"_id": 0, "run_id": 1, "stage": 1, "stage_index": 1, "step": 1, "examples_seen": 1,
                      "response_type": 1, "mean": {"$avg": f"$values.{quantity}"}}},
    ])
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "stage", "stage_index", "step", "examples_seen", "response_type", "mean"])
    return frame.sort_values(["run_id", "stage_index", "step"]).drop_duplicates(
        ["run_id", "stage_index", "step", "response_type"], keep="last").reset_index(drop=True)


def curve(frame: pd.DataFrame, run_id: int, rtype: str, stage_index: int | None = None) -> pd.Series:
    """One run's mean curve of one type (within a stage if given), indexed by examples seen."""
    sel = frame[(frame.run_id == run_id) & (frame.response_type == rtype)]
    if stage_index is not None:
        sel = sel[sel.stage_index == stage_index]
    return sel.set_index("examples_seen")["mean"].sort_index()


def _fmt(x: float) -> str:
    return f"{x:+.2f}" if np.isfinite(x) else "n/a"


def _change(series: pd.Series) -> float:
    return float(series.iloc[-1] - series.iloc[0]) if len(series) >= 2 else float("nan")


def sft_raises_chosen(frame: pd.DataFrame, run_id: int) -> Finding:
    c = curve(frame, run_id, "chosen", 0)
    if len(c) < 2:
        return Finding("SFT raises y+", "log pi(y+) rises steadily during SFT", None, "no chosen probes")
    delta = _change(c)
    return Finding("SFT raises y+", "log pi(y+) rises steadily during SFT", delta > 0,
                   f"y+ {c.iloc[0]:.1f} -> {c.iloc[-1]:.1f} ({_fmt(delta)} nats)",
                   {"start": float(c.iloc[0]), "end": float(c.iloc[-1])})


def rise_then_fall(frame: pd.DataFrame, run_id: int) -> Finding:
    """y-, the rephrases, y+ of test prompts and random sentences rise a little, then fall: the peak is
    inside the run, above both ends. Held when most of the types recorded do."""
    parts, verdicts, numbers = [], [], {}
    for rtype in RISE_THEN_FALL:
        c = curve(frame, run_id, rtype, 0)
        if len(c) < 3:
            continue
        peak_at = int(np.argmax(c.values))
        rose, fell = c.max() > c.iloc[0], c.max() > c.iloc[-1]
        verdict = bool(rose and fell and 0 < peak_at < len(c) - 1)
        verdicts.append(verdict)
        numbers[rtype] = {"start": float(c.iloc[0]), "peak": float(c.max()), "end": float(c.iloc[-1]),
                          "peak_at_examples": int(c.index[peak_at])}
        parts.append(f"{rtype}: {c.iloc[0]:.1f} -> peak {c.max():.1f} @ {c.index[peak_at]} -> {c.iloc[-1]:.1f}"
                     f" ({'rise-fall' if verdict else 'no rise-fall'})")
    held = (sum(verdicts) > len(verdicts) / 2) if verdicts else None
    numbers["share"] = f"{sum(verdicts)}/{len(verdicts)}"
    return Finding("y- and rephrases rise then fall",
                   "during SFT, y-, the rephrases, y+ of test prompts and random sentences first rise, then fall",
                   held, f"{sum(verdicts)} of {len(verdicts)} types rose then fell: " + ("; ".join(parts) or "no probes"),
                   numbers)


def permutations_fall(frame: pd.DataFrame, run_id: int) -> Finding:
    parts, verdicts, numbers = [], [], {}
    for rtype in PERMUTATIONS:
        c = curve(frame, run_id, rtype, 0)
        if len(c) < 2:
            continue
        verdicts.append(_change(c) < 0)
        numbers[rtype] = _change(c)
        parts.append(f"{rtype} {_fmt(_change(c))} nats")
    return Finding("permutations fall", "word permutations fall from the start of SFT",
                   all(verdicts) if verdicts else None, "; ".join(parts) or "no permutation probes", numbers)


def other_prompts_rise_slower(frame: pd.DataFrame, run_id: int) -> Finding:
    chosen = _change(curve(frame, run_id, "chosen", 0))
    parts, verdicts, numbers = [f"y+ {_fmt(chosen)}"], [], {"chosen": chosen}
    for rtype in OTHER_PROMPTS:
        d = _change(curve(frame, run_id, rtype, 0))
        if not np.isfinite(d):
            continue
        verdicts.append(bool(0 < d < chosen))
        numbers[rtype] = d
        parts.append(f"{rtype} {_fmt(d)}")
    return Finding("y+ of other prompts rises, more slowly than y+",
                   "y+ of other training prompts keeps rising during SFT, more slowly than y+ (hallucination)",
                   all(verdicts) if verdicts else None, "; ".join(parts) + " nats", numbers)


def dpo_squeeze(frame: pd.DataFrame, run_id: int, argmax: pd.DataFrame | None, dpo_stage: int = 1) -> Finding:
    """Off-policy DPO: the margin rises while y+ and y- both fall, and the argmax confidence rises."""
    c, r = curve(frame, run_id, "chosen", dpo_stage), curve(frame, run_id, "rejected", dpo_stage)
    if len(c) < 2 or len(r) < 2:
        return Finding("DPO squeezes", "y+ and y- both fall while argmax confidence rises", None, "no DPO probes")
    margin = _change(c) - _change(r)
    numbers = {"chosen": _change(c), "rejected": _change(r), "margin": margin}
    held = _change(c) < 0 and _change(r) < 0 and margin > 0
    text = f"during DPO: y+ {_fmt(_change(c))}, y- {_fmt(_change(r))}, margin {_fmt(margin)}"
    if argmax is not None:
        a = curve(argmax, run_id, "chosen", dpo_stage)
        if len(a) >= 2:
            numbers["argmax_confidence"] = _change(a)
            held = held and _change(a) > 0
            text += f", argmax confidence {a.iloc[0]:.1f} -> {a.iloc[-1]:.1f}"
    return Finding("DPO lowers y+ and y-, argmax confidence rises",
                   "off-policy DPO: margin up, log pi(y+) and log pi(y-) both down, argmax confidence up",
                   bool(held), text + " nats", numbers)


def margin_curve(frame: pd.DataFrame, run_id: int, stage: int) -> pd.Series:
    """The probe-set margin relative to the stage's start: (y+ - y+_0) - (y- - y-_0)."""
    c, r = curve(frame, run_id, "chosen", stage), curve(frame, run_id, "rejected", stage)
    return (c - c.iloc[0]) - (r - r.iloc[0])


def extend_slows_decay(frame: pd.DataFrame, baseline: int, extend: int, dpo_stage: int = 1,
                       types: Sequence[str] = ("chosen", "rejected", "irrelevant_train", "random_sentence")) -> Finding:
    """Decay during DPO, extend against baseline, at equal DPO steps and at equal margin."""
    numbers: dict[str, Any] = {}
    wins_steps, wins_margin, parts = [], [], []
    mb, me = margin_curve(frame, baseline, dpo_stage), margin_curve(frame, extend, dpo_stage)
    target = min(mb.max(), me.max()) if len(mb) and len(me) else float("nan")
    for rtype in types:
        b, e = curve(frame, baseline, rtype, dpo_stage), curve(frame, extend, rtype, dpo_stage)
        if len(b) < 2 or len(e) < 2:
            continue
        db_, de = _change(b), _change(e)
        wins_steps.append(de > db_)
        at_margin = {}
        for name, series, m in (("baseline", b, mb), ("extend", e, me)):
            reach = m.index[m >= target]
            at = reach[0] if len(reach) else m.index[-1]
            at_margin[name] = float(series.loc[at] - series.iloc[0])
        wins_margin.append(at_margin["extend"] > at_margin["baseline"])
        numbers[rtype] = {"baseline": db_, "extend": de, "at_margin": at_margin}
        parts.append(f"{rtype}: baseline {_fmt(db_)} vs extend {_fmt(de)} "
                     f"(at margin {target:.1f}: {_fmt(at_margin['baseline'])} vs {_fmt(at_margin['extend'])})")
    numbers["equal_margin"] = target
    held = (all(wins_steps) and all(wins_margin)) if wins_steps else None
    return Finding("extend slows the decay during DPO",
                   "after extend (SFT on y+ and y-), every probe decays more slowly during DPO than the baseline",
                   held, "; ".join(parts) + " nats", numbers)


def table_html(findings: Sequence[Finding]) -> str:
    """The findings as an HTML table (for the report)."""
    mark = {True: "held", False: "did not hold", None: "not checked"}
    rows = "".join(
        f"<tr class='{mark[f.held].replace(' ', '-')}'><td>{f.name}</td><td>{f.prediction}</td>"
        f"<td><b>{mark[f.held]}</b></td><td>{f.evidence}</td></tr>" for f in findings)
    return ("<table class='findings'><thead><tr><th>finding</th><th>the paper predicts</th><th>this run</th>"
            f"<th>numbers</th></tr></thead><tbody>{rows}</tbody></table>")

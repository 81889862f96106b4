"""Does CHES predict displacement here? CHES before training against each pair's eventual change
of log pi(y+) over a stage (Razin et al., ICLR 2025), with the correlation and its interval.

Razin et al. predict that pairs with a higher CHES see log pi(y+) fall more under DPO: a negative
correlation between CHES and the change. The verdict reads the Spearman correlation's 95% Fisher
interval (standard error sqrt(1.06 / (n - 3)), Fieller et al. 1957): it holds when the interval lies
below 0, did not hold when above, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
from scipy import stats as _stats

from ldreg.query.charts.common import configure
from ldreg.query.errors import QueryError
from ldreg.query.paired import line_buckets
from ldreg.store.collections import OBSERVATIONS

VARIANTS = {"ches": "CHES (sums)", "ches_norm": "CHES (means, length-normalised)"}


def _last_stage(db, run_id: int) -> int:
    doc = db.runs.find_one({"_id": run_id}, {"config.stages": 1})
    if doc is None:
        raise QueryError(f"run {run_id}: no such run; `ldreg runs` lists them")
    return max(len((doc.get("config") or {}).get("stages") or []) - 1, 0)


def ches_frame(db, run_id: int, stage_index: int | None = None, probe_set: str | None = None) -> pd.DataFrame:
    """Per example: both CHES scores at the start of stage ``stage_index`` (default: the run's last
    stage) and the change of log pi(y+) (its ``chosen`` type) from the first to the last probe of
    that stage."""
    stage = _last_stage(db, run_id) if stage_index is None else stage_index
    first = db[OBSERVATIONS].find_one({"run_id": run_id, "kind": "ches", "stage_index": stage,
                                       **({"probe_set": probe_set} if probe_set else {})}, sort=[("step", 1)])
    if first is None:
        raise QueryError(f"run {run_id}: no CHES stored at the start of stage {stage}; set probing.ches: {{every: 0}} "
                         "in its spec and rerun")
    chosen = first.get("meta", {}).get("chosen", "chosen")
    line = line_buckets(db, run_id, "probe", first["probe_set"], chosen, stage, ["logp_sum"])
    if len(line) < 2:
        raise QueryError(f"run {run_id}: stage {stage} has fewer than two probes of {chosen!r}; nothing changed to compare")
    start = dict(zip(line[0]["example_ids"], line[0]["values"]["logp_sum"]))
    end = dict(zip(line[-1]["example_ids"], line[-1]["values"]["logp_sum"]))
    rows = [{"run": run_id, "example_id": i, "ches": c, "ches_norm": cn, "d_chosen": end[i] - start[i]}
            for i, c, cn in zip(first["example_ids"], first["values"]["ches"], first["values"]["ches_norm"])
            if i in start and i in end]
    return pd.DataFrame(rows, columns=["run", "example_id", "ches", "ches_norm", "d_chosen"])


@dataclass
class Correlation:
    n: int
    pearson: float
    pearson_low: float
    pearson_high: float
    spearman: float
    spearman_low: float
    spearman_high: float
    verdict: str  # "held", "did not hold", "inconclusive"

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"Spearman {self.spearman:+.2f} [{self.spearman_low:+.2f}, {self.spearman_high:+.2f}], "
                f"Pearson {self.pearson:+.2f} [{self.pearson_low:+.2f}, {self.pearson_high:+.2f}], n {self.n}")


def _fisher(r: float, n: int, se_scale: float, level: float) -> tuple[float, float]:
    if n <= 3 or not math.isfinite(r):
        return math.nan, math.nan
    z, crit = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), float(_stats.norm.ppf((1 + level) / 2))
    se = math.sqrt(se_scale / (n - 3))
    return math.tanh(z - crit * se), math.tanh(z + crit * se)


def correlation(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Correlation:
    """Pearson and Spearman correlations of finite pairs with Fisher-z intervals, and the verdict on
    Razin et al.'s prediction (a negative correlation of CHES with the change of log pi(y+))."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        nan = math.nan
        return Correlation(n, nan, nan, nan, nan, nan, nan, "inconclusive")
    pr = float(_stats.pearsonr(a, b)[0])
    sr = float(_stats.spearmanr(a, b)[0])
    pl, ph = _fisher(pr, n, 1.0, level)
    sl, sh = _fisher(sr, n, 1.06, level)
    verdict = "held" if sh < 0 else "did not hold" if sl > 0 else "inconclusive"
    return Correlation(n, pr, pl, ph, sr, sl, sh, verdict)


def ches_chart(frame: pd.DataFrame, variant: str = "ches", title: str | None = None) -> alt.TopLevelMixin:
    """CHES before training against the change of log pi(y+) over the stage, one point per pair."""
    if variant not in VARIANTS:
        raise QueryError(f"variant: {variant!r} is not a CHES variant; use one of {', '.join(VARIANTS)}")
    c = correlation(frame[variant], frame["d_chosen"])
    points = alt.Chart(frame).mark_circle(size=50, opacity=0.7).encode(
        x=alt.X(f"{variant}:Q", title=f"{VARIANTS[variant]} before training"),
        y=alt.Y("d_chosen:Q", title="change of log pi(y+) over the stage (nats)"),
        color=alt.Color("run:N", title="run"), tooltip=["run:N", "example_id:Q", f"{variant}:Q", "d_chosen:Q"])
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#888").encode(y="y:Q")
    return configure(alt.layer(points, zero), title or "Does CHES predict displacement?",
                     f"{c.text()}; Razin et al.'s prediction (negative): {c.verdict}")

"""A sweep's result against its swept axes: one number per run, pooled over seeds, one line per loss.

The number is a finding's kind of quantity: the paired change of a probe quantity over one stage
(e.g. log pi(y+) from the first to the last probe of the DPO stage), averaged over the probe
examples. Runs that differ only in their seed are pooled: with two or more seeds, a t-interval
over the seeds' means; with one, that run's paired t-interval over examples. Reads stored runs
only (the query layer's selection and pairing); it never imports training.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ldreg.errors import LdregError
from ldreg.query.paired import example_matrix, line_buckets
from ldreg.query.select import select_runs

SEED_KEYS = ("seed",)


def config_value(config: dict[str, Any], key: str) -> Any:
    """``stages.1.params.beta`` read from a run's config (None where it has no such key)."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _scalar(value: Any) -> Any:
    """A swept value as one chart value: a list or mapping (a whole stage list, say) as its JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def stage_changes(db, sweep_id: str, *, quantity: str = "logp_sum", response_type: str = "chosen",
                  stage: int = -1, probe_set: str = "train") -> pd.DataFrame:
    """One row per COMPLETED run of the sweep: its config values of every swept axis, the loss of the
    stage, and the mean (SE, n) over examples of the quantity's change from the stage's first probe to its last."""
    from ldreg.sweep import store

    axes = store.axes_of(store.get(db, sweep_id))
    rows = []
    for run in select_runs(db, sweep=sweep_id, status=["COMPLETED"]):
        stages = run.config.get("stages") or []
        index = stage if stage >= 0 else len(stages) + stage
        buckets = line_buckets(db, run.id, "probe", probe_set, response_type, index, [quantity])
        if len(buckets) < 2:
            continue
        _, values = example_matrix([buckets[0], buckets[-1]], [quantity])
        change = values[quantity][1] - values[quantity][0]
        change = change[np.isfinite(change)]
        if change.size == 0:
            continue
        rows.append({"run": run.id, "loss": (stages[index] or {}).get("loss") if 0 <= index < len(stages) else None,
                     "seed": run.config.get("seed"), "mean": float(change.mean()), "n": int(change.size),
                     "se": float(change.std(ddof=1) / np.sqrt(change.size)) if change.size > 1 else float("nan"),
                     **{axis: _scalar(config_value(run.config, axis)) for axis in axes}})
    if not rows:
        raise LdregError(f"sweep {sweep_id}: no COMPLETED run has two probes of {response_type!r} in that stage; "
                         f"`ldreg sweep status {sweep_id}` shows where it stands")
    return pd.DataFrame(rows)


def pooled(frame: pd.DataFrame, by: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """Seeds pooled per group: the mean of the runs' means and its t-interval (over seeds, or over
    examples when the group has one run)."""
    from scipy import stats

    out = []
    for key, group in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        k = len(group)
        if k >= 2:
            mean, se, df, over = group["mean"].mean(), group["mean"].std(ddof=1) / np.sqrt(k), k - 1, "seeds"
        else:
            mean, se, df, over = group["mean"].iloc[0], group["se"].iloc[0], group["n"].iloc[0] - 1, "examples"
        half = float(stats.t.ppf(0.5 + confidence / 2, df) * se) if df >= 1 and np.isfinite(se) else float("nan")
        out.append({**dict(zip(by, key)), "mean": mean, "lo": mean - half, "hi": mean + half, "runs": k,
                    "interval over": over, "run ids": ",".join(str(r) for r in sorted(group["run"]))})
    return pd.DataFrame(out)


def choose_axis(frame: pd.DataFrame, axes: list[str]) -> str:
    """The swept axis to draw along: the first that is neither the seed nor a loss; else the loss."""
    for axis in axes:
        values = frame[axis].dropna()
        structured = values.map(lambda v: isinstance(v, str) and v[:1] in "[{").any()  # whole lists: not an axis
        if axis not in SEED_KEYS + ("name", "tags") and not axis.endswith(".loss") and not structured \
                and values.nunique() > 1:
            return axis
    return "loss"


def axis_chart(frame: pd.DataFrame, axis: str, title: str, confidence: float = 0.95):
    """Mean change against ``axis``, one line per loss, the pooled interval as error bars."""
    import altair as alt

    table = pooled(frame, ["loss", axis] if axis != "loss" else ["loss"], confidence)
    numeric = axis != "loss" and pd.api.types.is_numeric_dtype(table[axis])
    field = axis.replace(".", "\\.")  # Vega-Lite reads "stages.0.lr" as a nested path unless escaped
    x = alt.X(f"{field}:{'Q' if numeric else 'N'}", title=axis,
              scale=alt.Scale(type="log") if numeric and (table[axis] > 0).all() and table[axis].max() / max(
                  table[axis].min(), 1e-300) >= 20 else alt.Undefined)
    base = alt.Chart(table).encode(x=x, color=alt.Color("loss:N", title="loss"))
    tooltip = [alt.Tooltip(f"{field}:{'Q' if numeric else 'N'}", title=axis), "loss",
               alt.Tooltip("mean:Q", format="+.3f"), "runs", "interval over", "run ids"]
    points = base.mark_point(filled=True, size=60).encode(y=alt.Y("mean:Q", title="mean change (nats)"),
                                                          tooltip=tooltip)
    bars = base.mark_errorbar().encode(y=alt.Y("lo:Q", title="mean change (nats)"), y2="hi:Q")
    layers = [bars, points] + ([base.mark_line().encode(y="mean:Q")] if axis != "loss" else [])
    return alt.layer(*layers).properties(
        title=alt.TitleParams(title, subtitle=f"seeds pooled; {confidence:.0%} t-interval over seeds "
                                              f"(over examples for a single run)"), width=360, height=240)


def sweep_chart(db, sweep_id: str, out, *, quantity: str = "logp_sum", response_type: str = "chosen",
                stage: int = -1, axis: str | None = None, probe_set: str = "train"):
    """Write the chart of ``quantity``'s change over ``stage`` against a swept axis; return its path."""
    from ldreg.query import outputs
    from ldreg.sweep import store

    frame = stage_changes(db, sweep_id, quantity=quantity, response_type=response_type, stage=stage,
                          probe_set=probe_set)
    axes = store.axes_of(store.get(db, sweep_id))
    if axis is not None and axis not in axes and axis != "loss":
        raise LdregError(f"--axis {axis}: not an axis of sweep {sweep_id}; its axes: {', '.join(axes) or 'none'}")
    axis = axis or choose_axis(frame, axes)
    chart = axis_chart(frame, axis, f"change of {quantity} of {response_type} over stage {stage} "
                                    f"(sweep {sweep_id})")
    (path,) = outputs.write(chart, pooled(frame, ["loss", axis] if axis != "loss" else ["loss"]),
                            outputs.targets(out, f"sweep-{sweep_id}", ["html"]))
    return path

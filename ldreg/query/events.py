"""Events across runs: the alarms runs raised (ldreg.store.events), as rows, text and chart marks.

A curve chart of changes since a stage start reads better with the moment an alarm fired marked
on it. A query spec asks for that with ``events:`` (``EventMarks``): each event becomes a
labelled vertical rule at its step, in the x coordinates of the chart (aligned or not), in every
panel, coloured like its run's curves when the chart colours by run. ``event_rules`` is the plain
layer for charts drawn by hand on examples seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import altair as alt
import pandas as pd

from ldreg.errors import SpecError, closest, preview
from ldreg.spec import AlarmSpec

COLUMNS = ("run", "alarm", "probe_set", "stage", "step", "examples_seen", "value", "message")
# an event's ``alarm`` is the name of the spec field that set it (ldreg.spec.AlarmSpec)
ALARMS = tuple(f.name for f in dataclasses.fields(AlarmSpec))
SHORT = {"displacement_share": "displacement", "squeeze": "squeeze"}
EVENT_COLOUR = "#b22222"  # rules not coloured by run (the chart colours by series or stage)


def event_rows(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stable plain rows (also the `ldreg events --json` objects), one per event."""
    return [{"run": int(e["run_id"]), "alarm": e["alarm"], "probe_set": e["probe_set"], "stage": e.get("stage", ""),
             "step": int(e["step"]), "examples_seen": int(e["examples_seen"]), "value": e.get("value"),
             "threshold": e.get("threshold"), "message": e.get("message", "")} for e in events]


def events_table(events: Sequence[Mapping[str, Any]]) -> str:
    """Tab-separated text: a header, then one line per event."""
    rows = event_rows(events)
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def event_rules(events: Sequence[Mapping[str, Any]], x: str = "examples_seen") -> alt.Chart:
    """Vertical rules at each event's ``x`` (layer them over a curve chart on the same x), with a
    tooltip naming the alarm; empty events give an empty layer."""
    frame = pd.DataFrame(event_rows(events), columns=[*COLUMNS, "threshold"])
    return alt.Chart(frame).mark_rule(color="#d62728", strokeDash=[2, 2]).encode(
        x=alt.X(f"{x}:Q"), tooltip=["run:N", "alarm:N", "probe_set:N", "step:Q", "message:N"])


# ---------------------------------------------------------------------------- marks in query specs

@dataclass
class EventMarks:
    """``events:`` in a query spec: draw the selected runs' alarms as labelled vertical rules.

    ``alarms``: which alarms (names of the experiment spec's ``alarms:`` fields; default all).
    ``probe_sets``: the probing sets whose alarms to draw (default: those the chart observes).
    ``label``: write the alarm and run beside each rule (alarms of one run at one step share a
    rule and a label). Only curve charts draw them.
    """

    alarms: list[str] | None = None
    probe_sets: list[str] | None = None
    label: bool = True

    def validate(self, where: str) -> None:
        for i, alarm in enumerate(self.alarms or []):
            if alarm not in ALARMS:
                raise SpecError(f"{where}.alarms[{i}]: no alarm {preview(alarm)}{closest(alarm, ALARMS)}; "
                                f"alarms are {', '.join(ALARMS)}")
        if self.alarms is not None and not self.alarms:
            raise SpecError(f"{where}.alarms: empty, so nothing would be drawn; list alarms or drop the key "
                            f"(all: {', '.join(ALARMS)})")

    def keep(self, event: Mapping[str, Any], observed: Sequence[str] = ()) -> bool:
        """Whether to draw ``event``; ``observed``: the probing sets the chart draws (the default)."""
        sets = self.probe_sets if self.probe_sets is not None else observed
        return (self.alarms is None or event["alarm"] in self.alarms) and (not sets or event["probe_set"] in sets)


def per_run(frame: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` has one value per run in ``frame`` (the run label, a config key)."""
    return column in frame and bool((frame.groupby("run_id")[column].nunique() <= 1).all())


def event_marks_frame(events: Sequence[Mapping[str, Any]], frame: pd.DataFrame, *, x: str,
                      columns: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """(one row per drawable event, how many were left out because the chart shows none of their
    stage). Each row has the chart's x for the event's step, found from the drawn points of the
    same run and stage (x minus examples seen is constant there, however the runs are aligned),
    ``event_label``, and the run's value of each of ``columns`` that is constant per run (the
    colour, the facet), so a rule takes its run's colour and sits in its run's panel."""
    rows, left_out = [], 0
    own = [c for c in dict.fromkeys(columns) if per_run(frame, c)]
    for e in events:
        drawn = frame[(frame["run_id"] == e["run_id"]) & (frame["stage_index"] == e.get("stage_index"))]
        if drawn.empty:
            left_out += 1
            continue
        point = drawn.iloc[0]
        at = {"examples_seen": e["examples_seen"], "step": e["step"],
              "x": point["x"] - point["examples_seen"] + e["examples_seen"] if "x" in drawn else e["examples_seen"]}
        rows.append({"run_id": int(e["run_id"]), "event_x": float(at[x]), "alarm": e["alarm"],
                     "probe_set": e["probe_set"], "event_step": int(e["step"]),
                     "event_label": f"{SHORT.get(e['alarm'], e['alarm'])} #{int(e['run_id'])}",
                     "message": e.get("message", ""), **{c: point[c] for c in own}})
    marks = pd.DataFrame(rows)
    if marks.empty:
        return marks, left_out
    # alarms of one run at one step share a rule and one label ("displacement + squeeze #12")
    keys = ["run_id", "event_x"]
    joined = marks.groupby(keys, sort=False).agg(
        alarm=("alarm", " + ".join), probe_set=("probe_set", lambda v: ", ".join(dict.fromkeys(v))),
        message=("message", " | ".join), events=("alarm", "size")).reset_index()
    first = marks.drop_duplicates(keys).drop(columns=["alarm", "probe_set", "message"])
    marks = first.merge(joined, on=keys)
    marks["event_label"] = [f"{' + '.join(SHORT.get(a, a) for a in alarms.split(' + '))} #{run}"
                            for alarms, run in zip(marks["alarm"], marks["run_id"])]
    return marks, left_out


def with_panels(marks: pd.DataFrame, data: pd.DataFrame, facet: str) -> pd.DataFrame:
    """The marks repeated in every panel (a facet value each), so that a faceted chart shows them
    all; a facet per run (``facet: run``) keeps each mark in its own run's panel."""
    if marks.empty or facet == "none" or facet not in data or facet in marks:
        return marks
    panels = list(dict.fromkeys(data[facet]))
    return pd.concat([marks.assign(**{facet: p}) for p in panels], ignore_index=True)


def event_layers(base: alt.Chart, marks: pd.DataFrame, colour: alt.Color | None, label: bool) -> list[alt.Chart]:
    """The rule (and label) layers over rows of ``marks`` merged into the chart's data: rows with an
    ``event_x``; coloured by ``colour`` (the curves' scale) when given."""
    if marks.empty:
        return []
    only = base.transform_filter("isValid(datum.event_x)")
    paint = {"color": colour} if colour is not None else {}
    fixed = {} if colour is not None else {"color": EVENT_COLOUR}
    tooltip = [alt.Tooltip("event_label:N", title="alarm"), alt.Tooltip("probe_set:N", title="probing set"),
               alt.Tooltip("event_step:Q", title="step"), alt.Tooltip("message:N")]
    layers = [only.mark_rule(strokeDash=[3, 3], strokeWidth=1.5, opacity=0.9, **fixed).encode(
        x=alt.X("event_x:Q"), tooltip=tooltip, **paint)]
    if label:
        layers.append(only.mark_text(angle=90, align="left", baseline="bottom", dx=4, dy=-3, fontSize=10,
                                     **fixed).encode(x=alt.X("event_x:Q"), y=alt.value(2), text="event_label:N",
                                                     **paint))
    return layers


def events_line(marks: pd.DataFrame, left_out: int) -> str:
    """What the rules are, for the subtitle."""
    shown = int(marks.drop_duplicates(["run_id", "event_x"])["events"].sum()) if not marks.empty else 0
    line = (f"dashed vertical rules: {shown} alarm(s) fired (ldreg events), at their step" if shown
            else "no alarm fired in the drawn stages (ldreg events)")
    return line + (f"; {left_out} in stages not drawn here" if left_out else "")

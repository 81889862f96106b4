"""Events across runs: the alarms runs raised (ldreg.store.events), as rows, text and chart marks.

A curve chart of changes since a stage start reads better with the moment an alarm fired marked
on it: ``event_rules`` gives a layer of vertical rules at each event's examples seen.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import altair as alt
import pandas as pd

COLUMNS = ("run", "alarm", "probe_set", "stage", "step", "examples_seen", "value", "message")


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

"""Declarative queries: a YAML file says which runs, which observations, how aggregated, which chart.

Validated by ``ldreg.validation`` like experiment specs, so a misspelt key or a wrong type gets one
message naming the dotted field and the nearest valid name. ``key=value`` overrides apply on top
(``chart.color=stage``); ``runs=12,15`` replaces the selection with those run ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ldreg.errors import SpecError, closest, preview
from ldreg.query.events import EventMarks
from ldreg.query.outputs import FORMATS, check_formats
from ldreg.query.pipeline import Aggregation, Pick
from ldreg.query.select import Selection, parse_ids
from ldreg.validation import from_dict, positive
from ldreg.spec import apply_overrides, load_raw

CHART_KINDS = ("curves", "influence", "entk")
SELECTION_SHORTHANDS = {"runs", "latest", "name", "tag", "sweep"}


@dataclass
class ChartSpec:
    """The picture. ``color``: run, series, response_type, stage, or a config key (e.g.
    ``stages.0.epochs``; ``name``: the experiment). ``dash``: the same choices, drawn as dash
    patterns (e.g. ``color: name, dash: seed``). ``facet``: series, response_type, stage, run,
    quantity or none. ``at``: the step a heatmap shows (an integer, first or last). ``normalise``: eNTK as cosines."""

    kind: Literal["curves", "influence", "entk"] = "curves"
    color: str = "run"
    dash: str | None = None
    facet: str = "series"
    x: Literal["x", "examples_seen", "step"] = "x"
    y: Literal["mean", "median"] = "mean"
    band: bool = True
    columns: int = field(default=3, metadata=positive())
    title: str | None = None
    subtitle: str | None = None
    order: list[str] | None = None
    at: int | str = "first"
    normalise: bool = False
    width: int = field(default=280, metadata=positive())
    height: int = field(default=220, metadata=positive())

    def validate(self, where: str) -> None:
        from ldreg.query.charts.curves import FACETS

        if self.facet not in FACETS:
            raise SpecError(f"{where}.facet: must be one of {', '.join(FACETS)}, not {preview(self.facet)}"
                            f"{closest(self.facet, FACETS)}")
        if isinstance(self.at, str) and self.at not in ("first", "last"):
            raise SpecError(f"{where}.at: a step number, first or last, not {preview(self.at)}")


@dataclass
class QuerySpec:
    name: str
    description: str = ""
    select: Selection = field(default_factory=Selection)
    observe: list[Pick] = field(default_factory=lambda: [Pick()])
    aggregate: Aggregation = field(default_factory=Aggregation)
    chart: ChartSpec = field(default_factory=ChartSpec)
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    events: EventMarks | None = None  # the runs' alarms as labelled vertical rules (ldreg.query.events)

    def validate(self, where: str) -> None:
        if not self.observe:
            raise SpecError("observe: needs at least one entry, e.g. [{quantity: logp_sum, response_types: [chosen]}]")
        if self.events is not None and self.chart.kind != "curves":
            raise SpecError(f"events: only curves charts mark events, and chart.kind is {self.chart.kind}; "
                            f"drop events or set chart.kind: curves")
        self.formats = check_formats(self.formats)


def _selection_overrides(data: dict[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``runs=12,15`` (replace the selection), ``latest=3``, ``name=x``, ``tag=y``; the rest pass on."""
    rest = []
    data = dict(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in SELECTION_SHORTHANDS:
            rest.append(item)
            continue
        select = dict(data.get("select") or {})
        if key == "runs":
            select = {"ids": parse_ids(value)}
        elif key == "latest":
            try:
                select["latest"] = int(value)
            except ValueError:
                raise SpecError(f"latest={preview(value, quote=False)}: expected a whole number, e.g. latest=3") from None
        elif key == "name":
            select.pop("name_contains", None)
            select["name"] = value
        elif key == "sweep":  # the runs of one sweep (ldreg.sweep)
            select["sweep"] = value
        else:
            select["tags"] = [t for t in value.split(",") if t]
        data["select"] = select
    return data, rest


def parse(data: dict[str, Any], overrides: Sequence[str] = ()) -> QuerySpec:
    data, rest = _selection_overrides(data, overrides)
    return from_dict(QuerySpec, apply_overrides(data, rest))


def load(path: str | Path, overrides: Sequence[str] = ()) -> QuerySpec:
    """Read (``include:`` works as in experiment specs), override, validate."""
    data = load_raw(path)
    data.setdefault("name", Path(path).stem)
    return parse(data, overrides)

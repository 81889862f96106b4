"""From a chart to its Vega-Lite spec and files, sending only the columns the chart uses.

A query frame carries every column a reader may want in a CSV (ids, labels, each statistic), but a
chart encodes a handful. Serialising all ~24 columns of a 5,600-row frame took longer than the
database query, and the drawing engine then parsed them all. Here each frame is serialised after
the spec is built, cut to the fields the spec names (encodings, tooltips, transforms, expressions
reading ``datum``); a spec using a transform not understood here keeps every column. An image
(PNG, SVG) also drops the hover-only layers (``common.HOVER``), and with them the tooltip fields.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import altair as alt
import pandas as pd
from altair.utils.data import to_values
from altair.utils.mimebundle import spec_to_mimebundle

from ldreg.query.charts.common import HOVER

PREFIX = "ldreg-frame-"  # names of the deferred frames in the spec's datasets
_DATUM = re.compile(r"datum\s*(?:\.\s*([A-Za-z_$][\w$]*)|\[\s*(['\"])(.*?)\2\s*\])")
# Transforms whose fields this module reads (the rest make it keep every column): what they read
# is under "field"/"groupby"/expressions, and what they create is not in the frame anyway.
_KNOWN_TRANSFORMS = {"aggregate", "filter", "calculate", "joinaggregate", "window", "bin", "timeunit",
                     "sample", "density", "stack"}


def _defer(data: Any, store: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """An Altair data transformer: a DataFrame is named (and kept in ``store``), not serialised."""
    if not isinstance(data, pd.DataFrame):
        return to_values(data)
    name = next((k for k, v in store.items() if v is data), None) or f"{PREFIX}{len(store)}"
    store[name] = data
    return {"name": name}


alt.data_transformers.register("ldreg-deferred", _defer)


def _walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair of a nested spec, depth first (list items have key None)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield None, value
            yield from _walk(value)


def _unescape(field: str) -> set[str]:
    """The frame columns a Vega-Lite field names: "a\\.b" is the column "a.b"; "a.b" is a's member b."""
    if "\\." in field:
        return {field.replace("\\.", ".")}
    return {field, field.split(".", 1)[0], field.split("[", 1)[0]}


def used_fields(spec: dict[str, Any]) -> set[str] | None:
    """The data fields a spec reads, or None when it may read any (a transform or option not
    understood here: every column is kept)."""
    used: set[str] = set()
    for key, value in _walk({k: v for k, v in spec.items() if k != "datasets"}):
        if key == "transform" and isinstance(value, list):
            for step in value:
                if isinstance(step, dict) and not (set(step) & _KNOWN_TRANSFORMS):
                    return None
        if key == "tooltip" and isinstance(value, dict) and value.get("content") == "data":
            return None
        if key in ("field", "groupby", "fields"):
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    used |= _unescape(item)
        if isinstance(value, str) and "datum" in value:
            used |= {m.group(1) or m.group(3) for m in _DATUM.finditer(value)}
    return used


def _without_layers(node: Any, name: str) -> Any:
    """``node`` with every layer named ``name`` left out (copied where changed, shared elsewhere)."""
    if isinstance(node, dict):
        out = {k: _without_layers(v, name) for k, v in node.items()}
        if isinstance(out.get("layer"), list):
            out["layer"] = [layer for layer in out["layer"]
                            if not (isinstance(layer, dict) and layer.get("name") == name)]
        return out
    if isinstance(node, list):
        return [_without_layers(v, name) for v in node]
    return node


def to_spec(chart: alt.TopLevelMixin, image: bool = False) -> dict[str, Any]:
    """The chart's Vega-Lite spec with its frames cut to the fields it uses. ``image``: without
    the hover-only layers, which a picture cannot show and which cost as much to draw as the rest."""
    frames: dict[str, pd.DataFrame] = {}
    with alt.data_transformers.enable("ldreg-deferred", store=frames):
        spec = chart.to_dict()
    if image:  # datasets are rows, not layers: left as they are
        datasets = spec.pop("datasets", None)
        spec = _without_layers(spec, HOVER) | ({"datasets": datasets} if datasets is not None else {})
    used = used_fields(spec)
    datasets = spec.setdefault("datasets", {})
    for name, frame in frames.items():
        columns = [c for c in frame.columns if used is None or c in used]
        datasets[name] = to_values(frame[columns])["values"]
    return spec


def save(chart: alt.TopLevelMixin, path: str | Path, fmt: str, scale: float = 1.0) -> Path:
    """Write the chart as ``fmt`` (html, png, svg or json) from its cut spec; html is self-contained."""
    path = Path(path)
    spec = to_spec(chart, image=fmt in ("png", "svg"))
    if fmt == "json":
        path.write_text(json.dumps(spec, indent=1))
        return path
    versions = {"vega_version": alt.VEGA_VERSION, "vegalite_version": alt.VEGALITE_VERSION,
                "vegaembed_version": alt.VEGAEMBED_VERSION}
    if fmt == "html":
        bundle = spec_to_mimebundle(spec, "html", mode="vega-lite", template="inline", **versions)
        path.write_text(bundle["text/html"], encoding="utf-8")
    elif fmt in ("png", "svg"):
        bundle = spec_to_mimebundle(spec, fmt, mode="vega-lite", engine="vl-convert", scale_factor=scale, **versions)
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle  # PNG comes with its metadata
        if fmt == "png":
            path.write_bytes(bundle["image/png"])
        else:
            path.write_text(bundle["image/svg+xml"], encoding="utf-8")
    else:
        raise ValueError(f"cannot write a chart as {fmt!r}; use html, png, svg or json")
    return path

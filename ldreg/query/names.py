"""How charts call response types: the display labels ("y+", "permuted y+") their plugins set.

One vocabulary in panels, legends, tables and captions. A run records the label of every type
it probes in its Sacred ``info`` (``response_labels``) as it starts, so the labels travel with
the data: the query layer reads them from the run documents and never imports a plugin (or
torch), and a figure drawn later, on a machine without that plugin, still says what was probed.
A type no selected run labelled (runs older than labels) is shown by its name.
"""

from __future__ import annotations

from typing import Mapping, Sequence

INFO_KEY = "response_labels"


def response_labels(db, run_ids: Sequence[int]) -> dict[str, str]:
    """Type name -> display label over the runs (a later run's label wins where they differ)."""
    labels: dict[str, str] = {}
    for doc in db.runs.find({"_id": {"$in": [int(r) for r in run_ids]}}, {f"info.{INFO_KEY}": 1}).sort("_id", 1):
        recorded = (doc.get("info") or {}).get(INFO_KEY) or {}
        labels.update({str(k): str(v) for k, v in recorded.items() if v})
    return labels


def label_of(response_type: str | None, labels: Mapping[str, str]) -> str:
    if response_type is None:
        return ""
    return labels.get(response_type, response_type)


def difference_label(response_type: str, minus: str, labels: Mapping[str, str]) -> str:
    """``y+ − y-``: the per-example difference of two types (the margin, for chosen minus rejected)."""
    return f"{label_of(response_type, labels)} − {label_of(minus, labels)}"

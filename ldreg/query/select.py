"""Selecting past runs: by id, name, tags, status, config values and time, newest first.

Runs are Sacred documents (``runs`` collection). Config conditions come in two spellings that
mean the same: a mapping ``{"stages.1.lr": {">": 1e-5}, "stages.1.loss": "dpo"}`` or compact
strings ``"stages.1.loss == dpo"``. Keys are config keys unless they start with a run field
(``experiment.``, ``meta.``, ``status``, ...); ``config.`` may be written or left out.
When nothing matches, the error says which filter emptied the selection and shows the runs
that come closest, so a typo costs one look, not a debugging session.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from ldreg.errors import SpecError
from ldreg.query.errors import QueryError

OPERATORS = {"==": "$eq", "=": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte",
             "in": "$in", "not in": "$nin", "~": "$regex"}
_RUN_FIELDS = ("experiment.", "meta.", "status", "host.", "start_time", "stop_time", "result", "info.", "_id")
_COMPACT = re.compile(r"^\s*(?P<key>[A-Za-z_][\w.\-]*)\s*(?P<op>==|!=|>=|<=|>|<|=|~|\bnot in\b|\bin\b)\s*(?P<value>.+?)\s*$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
STATUSES = ("COMPLETED", "RUNNING", "FAILED", "INTERRUPTED", "QUEUED", "TIMEOUT")


@dataclass
class Selection:
    """Which runs a query reads. Every filter given must hold; ``latest`` keeps the newest N.

    ``name``: the Sacred experiment name, exact (``name_contains`` for a substring).
    ``tags``: every one of them must be on the run. ``status``: one or more Sacred statuses.
    ``where``: config conditions (see the module docstring). ``after``/``before``: ISO dates or
    times bounding the run's start time. ``sweep``: a sweep's id, for the runs of its configs.
    """

    ids: list[int] | None = None
    name: str | None = None
    name_contains: str | None = None
    tags: list[str] = field(default_factory=list)
    status: list[str] | None = None
    where: Any = None
    after: str | None = None
    before: str | None = None
    latest: int | None = None
    sweep: str | None = None  # the runs of one sweep (`ldreg sweep list`), by the tag each carries

    def validate(self, where: str) -> None:
        prefix = f"{where}." if where else ""
        if self.status:
            self.status = [s.upper() for s in self.status]
            for s in self.status:
                if s not in STATUSES:
                    raise SpecError(f"{prefix}status: no status {s!r}; use one of {', '.join(STATUSES)}")
        conditions(self.where, f"{prefix}where")
        for key in ("after", "before"):
            _parse_time(getattr(self, key), f"{prefix}{key}")
        if self.latest is not None and self.latest <= 0:
            raise SpecError(f"{prefix}latest: must be > 0, got {self.latest}")


@dataclass
class RunInfo:
    """What the query layer needs of a run: identity, config and when it ran."""

    id: int
    name: str
    status: str
    config: dict[str, Any]
    tags: list[str]
    start_time: dt.datetime | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "RunInfo":
        return cls(id=int(doc["_id"]), name=doc.get("experiment", {}).get("name", "?"), status=doc.get("status", "?"),
                   config=dict(doc.get("config") or {}), tags=list((doc.get("meta") or {}).get("tags") or []),
                   start_time=doc.get("start_time"))


# ---------------------------------------------------------------- conditions

def _value(raw: str) -> Any:
    """A compact condition's value: YAML scalars and lists, with 1e-5 read as a number."""
    raw = raw.strip()
    if _FLOAT.match(raw):
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _field(key: str) -> str:
    key = key.strip()
    if key.startswith("config.") or key.startswith(_RUN_FIELDS):
        return key
    return f"config.{key}"


def _numeric(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return _value(value)
    return value


def _operator(op: str, value: Any, where: str) -> tuple[str, Any]:
    op = op.strip()
    if op not in OPERATORS:
        raise SpecError(f"{where}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    mongo = OPERATORS[op]
    if mongo in ("$in", "$nin"):
        if not isinstance(value, list):
            raise SpecError(f"{where}: {op!r} needs a list, e.g. [dpo, ipo], got {value!r}")
        value = [_numeric(v) for v in value]
    else:
        value = _numeric(value)
    return mongo, value


def conditions(spec: Any, where: str = "where") -> dict[str, Any]:
    """The MongoDB filter for config conditions given as a mapping, a string, or a list of strings."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        spec = [spec]
    out: dict[str, dict[str, Any]] = {}

    def add(key: str, op: str, value: Any, here: str) -> None:
        mongo, value = _operator(op, value, here)
        out.setdefault(_field(key), {})[mongo] = value

    if isinstance(spec, Mapping):
        for key, cond in spec.items():
            here = f"{where}.{key}"
            if isinstance(cond, Mapping):
                for op, value in cond.items():
                    add(str(key), str(op), value, here)
            else:
                add(str(key), "==", cond, here)
    elif isinstance(spec, (list, tuple)):
        for i, item in enumerate(spec):
            here = f"{where}[{i}]"
            if not isinstance(item, str):
                raise SpecError(f"{here}: expected a condition like 'stages.1.loss == dpo', got {item!r}")
            match = _COMPACT.match(item)
            if not match:
                raise SpecError(f"{here}: cannot read {item!r}; write KEY OP VALUE, e.g. 'stages.1.lr > 1e-5' "
                                f"(operators: {', '.join(OPERATORS)})")
            add(match["key"], match["op"], _value(match["value"]), here)
    else:
        raise SpecError(f"{where}: expected a mapping like {{stages.1.loss: dpo}} or a list of strings like "
                        f"['stages.1.loss == dpo'], got {spec!r}")
    return {k: (v["$eq"] if list(v) == ["$eq"] else v) for k, v in out.items()}


def _parse_time(value: str | None, where: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise SpecError(f"{where}: expected an ISO date or time like 2025-01-31 or 2025-01-31T14:00, "
                        f"got {value!r}") from None


# ---------------------------------------------------------------- the MongoDB filter

def run_filters(sel: Selection) -> dict[str, dict[str, Any]]:
    """One MongoDB filter per given criterion, named, so an empty result can say which emptied it."""
    filters: dict[str, dict[str, Any]] = {}
    if sel.ids:
        filters[f"ids={sel.ids}"] = {"_id": {"$in": [int(i) for i in sel.ids]}}
    if sel.name:
        filters[f"name={sel.name!r}"] = {"experiment.name": sel.name}
    if sel.name_contains:
        filters[f"name_contains={sel.name_contains!r}"] = {"experiment.name": {"$regex": re.escape(sel.name_contains)}}
    if sel.sweep:
        filters[f"sweep={sel.sweep!r}"] = {"meta.tags": f"sweep:{sel.sweep}"}
    if sel.tags:
        filters[f"tags={sel.tags}"] = {"meta.tags": {"$all": list(sel.tags)}}
    if sel.status:
        filters[f"status={sel.status}"] = {"status": {"$in": [s.upper() for s in sel.status]}}
    for key, cond in conditions(sel.where).items():
        filters[f"{key.removeprefix('config.')} {cond}"] = {key: cond}
    span: dict[str, Any] = {}
    if sel.after:
        span["$gte"] = _parse_time(sel.after, "after")
    if sel.before:
        span["$lt"] = _parse_time(sel.before, "before")
    if span:
        filters[f"started in [{sel.after or '...'}, {sel.before or '...'})"] = {"start_time": span}
    return filters


def _combined(filters: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    parts = list(filters.values())
    return {"$and": parts} if len(parts) > 1 else dict(parts[0]) if parts else {}


_LIGHT = {"captured_out": 0, "info": 0, "sources": 0, "artifacts": 0, "resources": 0, "host": 0}


def select_runs(db, sel: Selection | None = None, **criteria: Any) -> list[RunInfo]:
    """The runs ``sel`` (or keyword criteria, e.g. ``name="sft-dpo", latest=3``) picks, oldest first.

    Raises QueryError, with the nearest matches, when nothing matches.
    """
    sel = sel or Selection(**criteria)
    filters = run_filters(sel)
    cursor = db.runs.find(_combined(filters), _LIGHT).sort("_id", -1)
    if sel.latest:
        cursor = cursor.limit(sel.latest)
    runs = [RunInfo.from_doc(d) for d in cursor]
    if not runs:
        raise QueryError(explain_empty(db, sel, filters))
    return sorted(runs, key=lambda r: r.id)


def explain_empty(db, sel: Selection, filters: Mapping[str, Mapping[str, Any]]) -> str:
    """Which filters match nothing on their own, close experiment names, and the latest runs."""
    lines = ["the query selects no runs"]
    alone = [(label, db.runs.count_documents(f)) for label, f in filters.items()]
    empty = [label for label, n in alone if n == 0]
    if empty:
        lines.append("no run at all matches " + "; ".join(empty))
    elif len(alone) > 1:
        lines.append("each filter matches some runs (" + ", ".join(f"{label}: {n}" for label, n in alone)
                     + ") but no run matches them all")
    names = [row["_id"] for row in db.runs.aggregate([{"$group": {"_id": "$experiment.name"}}]) if row["_id"]]
    wanted = sel.name or sel.name_contains
    if wanted:
        close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
        if close:
            lines.append("experiment names close to " + repr(wanted) + ": " + ", ".join(map(repr, close)))
    latest = [RunInfo.from_doc(d) for d in db.runs.find({}, _LIGHT).sort("_id", -1).limit(5)]
    if latest:
        lines.append("latest runs: " + "; ".join(
            f"#{r.id} {r.name} {r.status}" + (f" tags={r.tags}" if r.tags else "") for r in latest))
    else:
        lines.append("the database holds no runs yet: run an experiment with `ldreg run SPEC` first")
    return ". ".join(lines)


def parse_ids(text: str | Sequence[int]) -> list[int]:
    """``"12,15"`` or ``"12-15"`` or ``[12, 15]`` -> run ids, for ``--runs``."""
    if not isinstance(text, str):
        return [int(i) for i in text]
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise SpecError(f"--runs: expected run ids like 12,15 or 12-15, got {text!r}") from None
    return ids

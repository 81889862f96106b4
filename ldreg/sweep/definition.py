"""What a sweep is: a base spec and the overrides of each config, expanded from axes and zips.

A sweep comes from the command line (``--grid seed=1,2 stages.1.loss=dpo,ipo``) or from a sweep
YAML (``base``, ``axes``, ``zip``, ``overrides``, ``executor``). Axes multiply; each zip group is
one axis whose keys vary together. Every config is checked as a full experiment spec before
anything runs, so a bad value fails at once naming the config and the field, not hours later.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldreg import yamlsafe
from ldreg.errors import SpecError, preview
from ldreg.spec import apply_overrides, load_raw, read_yaml
from ldreg.validation import from_dict

MAX_CONFIGS = 10_000
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


@dataclass
class ExecutorChoice:
    """Which executor runs the configs, and its options (``workers``, ``address``, ``partition``, ...)."""

    name: str = "local"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepFile:
    """A sweep YAML: ``base`` is an experiment spec file (relative to the sweep file) or an inline spec."""

    base: Any = None
    name: str | None = None
    axes: dict[str, list] = field(default_factory=dict)
    zip: list[dict[str, list]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    executor: ExecutorChoice = field(default_factory=ExecutorChoice)

    def validate(self, where: str) -> None:
        if self.base is None:
            raise SpecError("base: required: an experiment spec file (e.g. base: experiments/smoke.yaml) "
                            "or an inline spec mapping")
        if not isinstance(self.base, (str, dict)):
            raise SpecError(f"base: expected a spec file name or a mapping, got {preview(self.base)}")


@dataclass
class Sweep:
    """A validated sweep: the base spec (includes merged, paths absolute) and one override list per config."""

    name: str
    base: dict[str, Any]
    axes: dict[str, list]
    configs: list[list[str]]
    executor: ExecutorChoice = field(default_factory=ExecutorChoice)
    source: str = ""

    @property
    def id(self) -> str:
        """The same definition gives the same id, so running it again resumes it instead of duplicating it."""
        digest = hashlib.sha256(json.dumps([self.base, self.configs], sort_keys=True, default=str).encode())
        return f"{self.name}-{digest.hexdigest()[:8]}"


def _values(raw: str, key: str) -> list:
    """``dpo,ipo`` or ``[0.1, 0.5]`` -> a list of YAML scalars (commas inside brackets stay together)."""
    text = raw.strip()
    if text.startswith("["):
        value = yamlsafe.loads(text, f"--grid {key}")
        if not isinstance(value, list):
            raise SpecError(f"--grid {key}: expected a list like [0.1, 0.5], got {preview(value)}")
        return value
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out = []
    for part in parts:
        if not part.strip():
            raise SpecError(f"--grid {key}={preview(raw, quote=False)}: an empty value; write values separated by "
                            f"commas, e.g. {key}=1,2,3")
        try:
            value = yamlsafe.loads(part.strip(), f"--grid {key}")
        except SpecError:
            value = part.strip()
        if isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads 1e-3 as text
            value = float(value)
        out.append(value)
    return out


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list]:
    """``["seed=1,2", "stages.1.loss=dpo,ipo"]`` -> ``{"seed": [1, 2], "stages.1.loss": ["dpo", "ipo"]}``."""
    axes: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--grid {preview(item, quote=False)}: expected KEY=V1,V2,..., e.g. seed=1,2 or "
                            f"stages.1.loss=dpo,ipo")
        if key in axes:
            raise SpecError(f"--grid {key}: given twice; list all its values once, e.g. {key}=1,2,3")
        axes[key] = _values(raw, key)
    return axes


def _check_axes(axes: dict[str, list], zips: list[dict[str, list]]) -> list[dict[str, list]]:
    """Every axis a non-empty list; each zip group's lists of one length; no key swept twice."""
    groups: list[dict[str, list]] = []
    seen: dict[str, str] = {}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"axes.{key}: expected a non-empty list of values, e.g. [1, 2], got {preview(values)}")
        seen[key] = f"axes.{key}"
        groups.append({key: values})
    for i, group in enumerate(zips):
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in group.items()}
        if not group or min(lengths.values()) <= 0:
            raise SpecError(f"zip[{i}]: each key needs a non-empty list of values, e.g. "
                            f"{{stages.1.lr: [1e-4, 3e-4], stages.1.params.beta: [0.1, 0.5]}}")
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise SpecError(f"zip[{i}]: the lists vary together, so they need one length; got {shown}")
        for key in group:
            if key in seen:
                raise SpecError(f"zip[{i}].{key}: already swept in {seen[key]}; sweep a key in one place")
            seen[key] = f"zip[{i}]"
        groups.append(group)
    return groups


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else ("null" if value is None else str(value))


def expand(axes: dict[str, list], zips: list[dict[str, list]] = (), fixed: list[str] = ()) -> list[list[str]]:
    """The product of the axes (each zip group one axis), as ``key=value`` override lists, in order."""
    groups = _check_axes(axes, list(zips))
    rows = [list(zip(*[[(k, v) for v in values] for k, values in g.items()])) for g in groups]
    total = 1
    for r in rows:
        total *= len(r)
    if total > MAX_CONFIGS:
        raise SpecError(f"the sweep has {total} configs, more than {MAX_CONFIGS}; sweep fewer values or split it")
    return [list(fixed) + [f"{k}={_text(v)}" for pair in combo for k, v in pair]
            for combo in itertools.product(*rows)]


def build(base_path: str | Path | None, *, base: dict[str, Any] | None = None, axes: dict[str, list] | None = None,
          zips: list[dict[str, list]] = (), overrides: list[str] = (), name: str | None = None,
          executor: ExecutorChoice | None = None, plugins=None) -> Sweep:
    """A sweep over the spec at ``base_path`` (or the mapping ``base``), every config validated."""
    raw = load_raw(base_path) if base is None else base
    configs = expand(dict(axes or {}), list(zips), list(overrides))
    sweep = Sweep(name=name or str(raw.get("name") or Path(str(base_path or "sweep")).stem), base=raw,
                  axes={**dict(axes or {}), **{k: v for g in zips for k, v in g.items()}}, configs=configs,
                  executor=executor or ExecutorChoice(), source=str(base_path or ""))
    check_configs(sweep, plugins)
    return sweep


def check_configs(sweep: Sweep, plugins=None) -> None:
    """Each config parses as an experiment spec (and, given ``plugins``, names installed plugins)."""
    from ldreg import spec as specs

    for i, overrides in enumerate(sweep.configs):
        try:
            specs.parse(apply_overrides(sweep.base, overrides), plugins)
        except SpecError as exc:
            raise SpecError(f"sweep config {i} ({' '.join(overrides) or 'the base'}): {exc}") from None


def load_file(path: str | Path, grid: list[str] = (), plugins=None) -> Sweep:
    """A sweep YAML; ``grid`` (``--grid`` items) adds or replaces axes."""
    path = Path(path)
    data = read_yaml(path)
    parsed = from_dict(SweepFile, data)
    axes = {**{str(k): v for k, v in parsed.axes.items()}, **parse_grid(list(grid))}
    if isinstance(parsed.base, str):
        target = path.parent / parsed.base
        if not target.is_file():
            raise SpecError(f"{path}: base: no such file {preview(str(target), 120, quote=False)}; "
                            f"base paths are relative to the sweep file")
        return build(target, axes=axes, zips=parsed.zip, overrides=parsed.overrides, name=parsed.name,
                     executor=parsed.executor, plugins=plugins)
    return build(None, base=parsed.base, axes=axes, zips=parsed.zip, overrides=parsed.overrides,
                 name=parsed.name or path.stem, executor=parsed.executor, plugins=plugins)


def is_sweep_file(path: str | Path) -> bool:
    """A sweep YAML has ``base:`` (an experiment spec has ``stages:``)."""
    try:
        data = read_yaml(Path(path))
    except SpecError:
        return False
    return "base" in data and "stages" not in data

"""Naming runs by what differs between them: "loss=dpo, seed=1", not "run 17".

A legend that repeats the full config says nothing; one that shows only the config keys whose
values differ across the selected runs says exactly what the comparison is about. The same
flattening finds seed groups: runs whose configs agree on everything but the seed.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from ldreg.query.select import RunInfo

SEED_KEY = "seed"
_MISSING = "—"


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"stages": [{"loss": "sft"}]}`` -> ``{"stages.0.loss": "sft"}``; empty containers kept as leaves."""
    if isinstance(config, Mapping) and config:
        items = config.items()
    elif isinstance(config, list) and config:
        items = enumerate(config)
    else:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _named(run: RunInfo) -> dict[str, Any]:
    """The run's config with its experiment name, which tells runs apart as well as any key."""
    return {"name": run.name, **run.config}


def differing_keys(configs: Sequence[Mapping[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted config keys whose values are not all equal (a key missing from some run counts)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    ignored = set(ignore)
    return [k for k in keys if k not in ignored
            and len({json.dumps(f.get(k, _MISSING), sort_keys=True, default=str) for f in flat}) > 1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells each key apart; a suffix never starts at a list index."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        out[key] = key
        for n in range(1, len(parts) + 1):
            suffix = parts[-n:]
            if suffix[0].isdigit() and n < len(parts):
                continue
            name = ".".join(suffix)
            if sum(1 for k in keys if k == name or k.endswith("." + name)) == 1:
                out[key] = name
                break
    return out


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _priority(key: str) -> tuple[int, str]:
    """Losses say most, then hyper-parameters, then the experiment name; derived stage names and the seed last."""
    parts = key.split(".")
    if parts[-1] == "loss":
        return 0, key
    if key == "name":
        return 2, key
    if parts[0] == "stages" and parts[-1] == "name":
        return 3, key
    return (4 if key == SEED_KEY else 1), key


def label_keys(configs: Sequence[Mapping[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """The differing keys worth a legend: one per way of splitting the runs (``name`` and
    ``stages.1.loss`` that split them alike say the same thing once)."""
    flat = [flatten(c) for c in configs]
    kept, partitions = [], []
    for key in sorted(differing_keys(configs, ignore), key=_priority):
        values = [json.dumps(f.get(key, _MISSING), sort_keys=True, default=str) for f in flat]
        partition = {frozenset(i for i, v in enumerate(values) if v == u) for u in set(values)}
        if partition not in partitions:
            kept.append(key)
            partitions.append(partition)
    return kept


def run_labels(runs: Sequence[RunInfo], ignore: Iterable[str] = ()) -> dict[int, str]:
    """Run id -> "key=value, ..." over the differing keys; "#id" added where labels would collide."""
    configs = [_named(r) for r in runs]
    keys = label_keys(configs, ignore)
    names = short_names(keys)
    labels = {}
    for run, config in zip(runs, configs):
        flat = flatten(config)
        labels[run.id] = ", ".join(f"{names[k]}={_show(flat.get(k, _MISSING))}" for k in keys)
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {rid: (f"#{rid}" if not label else f"#{rid} {label}" if counts[label] > 1 else label)
            for rid, label in labels.items()}


def seed_groups(runs: Sequence[RunInfo]) -> dict[int, str]:
    """Run id -> group label, where a group holds the runs that differ only in their seed."""
    keyed: dict[str, list[RunInfo]] = {}
    for run in runs:
        flat = flatten(_named(run))
        flat.pop(SEED_KEY, None)
        keyed.setdefault(json.dumps(flat, sort_keys=True, default=str), []).append(run)
    firsts = [members[0] for members in keyed.values()]
    base = run_labels(firsts, ignore={SEED_KEY})
    out = {}
    for members in keyed.values():
        label = base[members[0].id] if len(firsts) > 1 else members[0].name
        seeds = sorted(_show(m.config.get(SEED_KEY, "?")) for m in members)
        count = f"{len(members)} seed{'s' if len(members) > 1 else ''}"
        suffix = f"{count}: {','.join(seeds)}" if len(members) <= 5 else count
        for m in members:
            out[m.id] = f"{label} ({suffix})"
    return out

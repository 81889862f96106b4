"""The paper authors' HH probing files, shipped in the package, named ``authors:SUBSET/SPLIT``.

The files (``resources/authors-probes``, README there for provenance and licences) hold, per HH
prompt, y+ and y- and every response type the paper probes. ldreg reads them two ways: as a
probing set (``data.probing.import_authors_probes``) and, through the ``jsonl`` adapter (their
``prompt``/``chosen``/``rejected`` fields), as real HH preference pairs for training. A name keeps
specs free of paths, so a fresh clone needs nothing outside the package.
"""

from __future__ import annotations

from pathlib import Path

from ldreg.data.errors import DataError

PREFIX = "authors:"
ROOT = Path(__file__).resolve().parent / "resources" / "authors-probes"
SPLITS = {"train": "formal_prob_train.jsonl", "test": "formal_prob_test.jsonl"}


def available() -> list[str]:
    return [f"{PREFIX}{d.name}/{s}" for d in sorted(ROOT.iterdir()) if d.is_dir() for s in SPLITS]


def authors_file(subset: str = "helpful-base", split: str = "train") -> Path:
    if split not in SPLITS:
        raise DataError(f"authors' split {split!r}: choose one of {', '.join(SPLITS)}")
    path = ROOT / subset / SPLITS[split]
    if not path.is_file():
        raise DataError(f"no authors' file for {PREFIX}{subset}/{split}; available: {', '.join(available())}")
    return path


def resolve_source(source: str) -> Path:
    """``authors:helpful-base/train`` -> the shipped JSON-lines file."""
    name = source.removeprefix(PREFIX)
    subset, _, split = name.partition("/")
    if not subset or not split:
        raise DataError(f"{source!r}: write authors:SUBSET/SPLIT, one of {', '.join(available())}")
    return authors_file(subset, split)

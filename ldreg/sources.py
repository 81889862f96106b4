"""Source schemes: ``NAME:ARG`` prefixes in ``model.base`` and ``data.source`` that a plugin resolves.

The core runs a spec without knowing who builds its inputs. The demo's base model
(``pretrained:fortunes-small``) and preference data (``generated:fortune-prefs``) are made by the
paper app (``ldreg.paper``), which registers those two schemes through the ``ldreg_register_sources``
hook like any plugin; the runner and the preflight check look a prefix up here, so the core never
imports the app. A prefix no plugin registered is left alone (a path or a hub id, as before).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:  # pragma: no cover
    from ldreg.registry import Plugins

KINDS = ("model", "data")
_PREFIX = re.compile(r"^([a-z][a-z0-9_-]*):(.+)$")


@dataclass(frozen=True)
class SourceScheme:
    """One prefix: ``name`` (``pretrained`` for ``pretrained:ARG``), which spec field it may stand in
    (``kind``: ``model`` for ``model.base``, ``data`` for ``data.source``),
    ``resolve(arg)`` -> a local path (it may build and cache what it names; the run calls it), and
    ``check(field, arg)`` -> one line for ``ldreg run --dry-run`` that builds nothing and raises an
    ``ldreg.errors.SpecError`` naming ``field`` when ``arg`` is unknown."""

    name: str
    kind: Literal["model", "data"]
    resolve: Callable[[str], str]
    check: Callable[[str, str], str]
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"source scheme {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def split(text: str) -> tuple[str, str] | None:
    """(scheme, argument) of ``scheme:argument``; None for anything else (a path, a hub id, ``tiny``)."""
    match = _PREFIX.match(text) if isinstance(text, str) else None
    return (match.group(1), match.group(2)) if match else None


def scheme_for(text: str, kind: str, plugins: "Plugins") -> tuple[SourceScheme, str] | None:
    """The registered scheme of kind ``kind`` that ``text`` names, with its argument; None when it
    names none (the caller treats ``text`` as a path or a hub id)."""
    parts = split(text)
    if parts is None or parts[0] not in plugins.source_schemes:
        return None
    scheme = plugins.source_schemes.get(parts[0])
    return (scheme, parts[1]) if scheme.kind == kind else None


def resolve(text: str, kind: str, plugins: "Plugins") -> str:
    """``text`` as a local path when a registered scheme names it (built if need be), else unchanged."""
    found = scheme_for(text, kind, plugins)
    return found[0].resolve(found[1]) if found else text

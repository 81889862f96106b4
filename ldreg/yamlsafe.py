"""YAML that a hostile or careless file cannot turn into a hang, a crash or a silent surprise.

``yaml.safe_load`` already refuses code, but it still expands alias bombs, recurses once per
nesting level (10,000 levels end in a RecursionError), decodes bytes without naming the file, and
lets a repeated key silently win. Specs and queries are small hand-written files, so this loader
refuses, with one message naming the file and line: files over ``MAX_BYTES``, bytes that are not
UTF-8, nesting deeper than ``MAX_DEPTH``, more than ``MAX_ALIASES`` aliases, more than ``MAX_NODES``
values once aliases are expanded, and duplicate keys. The limits are checked on the event stream
(iterative, linear in the file) before anything is built, so time and memory stay bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ldreg.errors import SpecError, preview

MAX_BYTES = 1 << 20  # 1 MiB: a spec is a page of YAML, not a dataset
MAX_DEPTH = 50
MAX_ALIASES = 100
MAX_NODES = 100_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NoDuplicatesLoader(_Loader):  # type: ignore[misc, valid-type]
    """The safe loader, except that a key given twice in one mapping is an error, not 'last wins'."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, tuple[int, int]] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; its keys may be overridden
                continue
            mark = key_node.start_mark
            line, column = mark.line + 1, mark.column + 1
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # a list or mapping used as a key
                raise _Refused(line, "a key must be a plain value, not a list or mapping") from None
            if first is not None:
                at = f"line {first[0]}" if first[0] != line else f"column {first[1]} of this line"
                raise _Refused(line, f"duplicate key {preview(key)} (first given at {at}); keep one of them")
            seen[key] = (line, column)
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """A limit this module enforces, at a line of the file."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line, self.what = line, what


def _check_events(text: str) -> None:
    """Depth, alias and expanded-size limits, on the parser's events (no recursion, no expansion)."""
    aliases = 0
    total = 0  # values so far, aliases counted as what they expand to
    sizes: dict[str, int] = {}  # anchor -> number of values it stands for, expanded
    stack: list[tuple[int, str | None]] = []  # per open collection: (total when it opened, its anchor)
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep; a spec is a shallow mapping")
            stack.append((total, event.anchor))
            total += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            opened, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = total - opened
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            total += 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Refused(line, f"more than {MAX_ALIASES} aliases (*name); write the values out instead")
            total += sizes.get(event.anchor, 1)
        if total > MAX_NODES:
            raise _Refused(line, f"expands to more than {MAX_NODES:,} values (an alias bomb?); "
                                 f"write a smaller file without nested aliases")


def _decode(raw: bytes, name: str) -> str:
    if b"\x00" in raw[:8192]:
        raise SpecError(f"{name}: a binary file, not YAML text; give a .yaml spec")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(f"{name}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; "
                        f"save the file as UTF-8 text") from None


def loads(text: str, name: str = "<text>") -> Any:
    """Parse ``text`` as safe YAML within the limits above, or raise a SpecError naming ``name``."""
    try:
        _check_events(text)
        return yaml.load(text, Loader=_NoDuplicatesLoader)  # noqa: S506 - a subclass of the safe loader
    except _Refused as exc:
        raise SpecError(f"{name}: line {exc.line}: {exc.what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{name}: not valid YAML{at}: {preview(problem, 120, quote=False)}") from None
    except RecursionError:  # not reachable past the depth check; kept so no input can print a traceback
        raise SpecError(f"{name}: nested too deeply; a spec is a shallow mapping") from None


def load_file(path: Path) -> Any:
    """The YAML value of the file at ``path``: size, encoding and structure checked first."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError(f"{path}: {size / (1 << 20):.1f} MiB is too large for a spec "
                            f"(at most {MAX_BYTES >> 20} MiB); keep large values in data files")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder; give a .yaml file") from None
    except PermissionError:
        raise SpecError(f"{path}: not readable (permission denied); check its permissions") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    return loads(_decode(raw, str(path)), str(path))


__all__ = ["loads", "load_file", "MAX_BYTES", "MAX_DEPTH", "MAX_ALIASES", "MAX_NODES"]

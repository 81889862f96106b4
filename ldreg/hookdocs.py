"""docs/plugin-hooks.md, generated from the hookspecs and the classes a plugin author works with.

The contract is documented once, in the code: each ``@hookspec`` docstring (ldreg/hookspecs.py),
the ``add`` of the registry its ``registry`` parameter is annotated with, the item type that
registry takes, and the objects ``hookspecs.OBJECTS`` names. Every hookspec of the module is
picked up, in the order written, so a hook added later is documented without touching this file.

    python -m ldreg.hookdocs > docs/plugin-hooks.md     # regenerate
    python -m ldreg.hookdocs --check docs/plugin-hooks.md  # exit 1 if it is out of date
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from ldreg import hookspecs

COMMAND = "python -m ldreg.hookdocs > docs/plugin-hooks.md"
LOADING_MODULES = ("ldreg.plugin_dir", "ldreg.plugin_trace")


def hooks() -> list[Callable[..., Any]]:
    """Every ``@hookspec`` function of ldreg.hookspecs, in source order."""
    marker = f"{hookspecs.PROJECT}_spec"
    found = [f for f in vars(hookspecs).values() if inspect.isfunction(f) and hasattr(f, marker)]
    return sorted(found, key=lambda f: f.__code__.co_firstlineno)


def markdown(doc: str | None) -> str:
    """A docstring as Markdown: dedented, RST ``code`` written as Markdown `code`."""
    text = inspect.cleandoc(doc or "")
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


class _Shown:
    """An annotation shown as written (``from __future__ import annotations`` makes them strings)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return value
    if isinstance(value, str):
        return _Shown(value)
    return _Shown(inspect.formatannotation(value))


def signature(fn: Callable[..., Any], name: str | None = None) -> str:
    """``name(params) -> return`` with annotations as written, without quotes."""
    sig = inspect.signature(fn)
    sig = sig.replace(parameters=[p.replace(annotation=_annotation(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=_annotation(sig.return_annotation))
    return f"{name or fn.__name__}{sig}"


def _registry_class(hook: Callable[..., Any]) -> type | None:
    """The registry type the hook's ``registry`` parameter is annotated with, from ldreg.registry."""
    annotation = inspect.signature(hook).parameters.get("registry")
    if annotation is None:
        return None
    name = annotation.annotation if isinstance(annotation.annotation, str) else annotation.annotation.__name__
    registry = importlib.import_module("ldreg.registry")
    return getattr(registry, name, None)


def _resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"`{f.default_factory()!r}`"  # type: ignore[misc]
    return "required"


def _first_paragraph(doc: str | None) -> str:
    return " ".join(markdown(doc).split("\n\n")[0].split())


def _cell(text: str) -> str:
    """Table cell text: a ``|`` inside code would end the cell in GitHub Markdown."""
    return text.replace("|", "\\|")


def _line(head: str, doc: str | None) -> str:
    summary = _first_paragraph(doc)
    return f"- {head}: {summary}" if summary else f"- {head}"


def _methods(cls: type) -> list[str]:
    """One line per public method or property the class itself defines."""
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, property):
            lines.append(_line(f"`{name}` (property)", member.__doc__))
        elif inspect.isfunction(member):
            abstract = " *(abstract: implement it)*" if getattr(member, "__isabstractmethod__", False) else ""
            shown = signature(member).replace("(self, ", "(").replace("(self)", "()")
            lines.append(_line(f"`{shown}`{abstract}", member.__doc__))
    return lines


def _attributes(cls: type) -> list[str]:
    """Class attributes a subclass sets (``name = ""``), for non-dataclass classes such as ABCs."""
    hints = typing.get_type_hints(cls) if not isinstance(cls, type) or cls.__module__ != "builtins" else {}
    lines = []
    for name, value in vars(cls).items():
        if name.startswith("_") or callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            continue
        shown = getattr(hints.get(name), "__name__", None) or str(hints.get(name, type(value).__name__))
        lines.append(f"| `{name}` | `{_cell(shown)}` | `{_cell(repr(value))}` |")
    return lines


def document_class(cls: type, title: str | None = None) -> str:
    """A class's section: its docstring, then its fields (dataclass) or attributes, then methods."""
    parts = [f"### {title or f'`{cls.__module__}.{cls.__qualname__}`'}", "", markdown(cls.__doc__)]
    if dataclasses.is_dataclass(cls):
        rows = [f"| `{f.name}` | `{_cell(str(f.type))}` | {_cell(_default(f))} |"
                for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        parts += ["", "| field | type | default |", "|---|---|---|", *rows]
    else:
        rows = _attributes(cls)
        if rows:
            parts += ["", "| attribute | type | default |", "|---|---|---|", *rows]
    methods = _methods(cls)
    if methods:
        parts += ["", *methods]
    return "\n".join(parts).rstrip() + "\n"


def document_hook(hook: Callable[..., Any]) -> str:
    parts = [f"## {hook.__name__}", "", "```python", signature(hook), "```", "", markdown(hook.__doc__), ""]
    registry = _registry_class(hook)
    if registry is not None:
        add = registry.add
        item_type = getattr(registry, "item_type", object)
        shown = signature(add, "add").replace("(self, ", "(").replace("item: T)", f"item: {item_type.__name__})")
        parts += [f"### `{registry.__name__}.add`", "", "```python", shown, "```", "", markdown(add.__doc__), ""]
        if item_type is not object:
            parts.append(document_class(item_type))
    for path in getattr(hookspecs, "OBJECTS", {}).get(hook.__name__, ()):
        parts.append(document_class(_resolve(path)))
    return "\n".join(parts).rstrip() + "\n"


def render() -> str:
    """The whole of docs/plugin-hooks.md."""
    intro = markdown(hookspecs.__doc__).split("\n\n")
    loading = [markdown(importlib.import_module(m).__doc__) for m in LOADING_MODULES]
    registry = importlib.import_module("ldreg.registry")
    parts = [
        "# Plugin hooks",
        "",
        f"<!-- generated by `{COMMAND}` from ldreg/hookspecs.py and the classes it names; "
        "edit those, not this file (tests/test_hookdocs.py fails when they differ) -->",
        "",
        "\n\n".join(p for p in intro if "docs/plugin-hooks.md" not in p and "Docstrings here" not in p),
        "",
        "## Loading plugins",
        "",
        markdown(registry.__doc__),
        "",
        *[p + "\n" for p in loading],
        f"The hooks: {', '.join(f'`{h.__name__}`' for h in hooks())}.",
        "",
        *[document_hook(h) for h in hooks()],
    ]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv[:1] == ["--check"]:
        path = Path(argv[1] if len(argv) > 1 else "docs/plugin-hooks.md")
        if not path.is_file() or path.read_text() != text:
            sys.stderr.write(f"{path} is out of date with the hookspecs; regenerate it: {COMMAND}\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

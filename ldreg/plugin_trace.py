"""LDREG_TRACE_PLUGINS=1: print each plugin hook call, and what it registered, to stderr.

Hooks are called through pluggy once per implementing plugin (see ``registry.collect``), so a
monitor added with pluggy's ``add_hookcall_monitoring`` sees every call with the one plugin it
runs; comparing the registry's names before and after the call says what that plugin added.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence

import pluggy

ENV_TRACE = "LDREG_TRACE_PLUGINS"
PREFIX = "ldreg-trace:"


def enabled() -> bool:
    return os.environ.get(ENV_TRACE, "").strip().lower() not in ("", "0", "false", "no")


def _names(kwargs: Mapping[str, object]) -> set[str]:
    registry = kwargs.get("registry")
    return set(registry.names()) if hasattr(registry, "names") else set()  # type: ignore[union-attr]


def trace_hook_calls(pm: pluggy.PluginManager, write: Callable[[str], object] | None = None) -> Callable[[], None]:
    """Monitor every hook call of ``pm``; returns pluggy's undo function. ``write`` defaults to stderr."""

    def out(line: str) -> None:
        (write or sys.stderr.write)(f"{PREFIX} {line}\n")

    before_names: list[set[str]] = []

    def who(impls: Sequence[pluggy.HookImpl]) -> str:
        names = [pm.get_name(i.plugin) or repr(i.plugin) for i in impls if not (i.hookwrapper or i.wrapper)]
        return ", ".join(repr(n) for n in names) or "no plugin"

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]) -> None:
        before_names.append(_names(kwargs))
        args = ", ".join(f"{k}={type(v).__name__}" for k, v in kwargs.items())
        out(f"call {hook_name}({args}) -> plugin {who(impls)}")

    def after(outcome: pluggy.Result, hook_name: str, impls: Sequence[pluggy.HookImpl],
              kwargs: Mapping[str, object]) -> None:
        added = sorted(_names(kwargs) - before_names.pop())
        registry = kwargs.get("registry")
        if outcome.exception is not None:
            out(f"  {hook_name} raised {type(outcome.exception).__name__}: {outcome.exception}")
        elif registry is not None:
            kind = getattr(registry, "kind", "item")
            kinds = kind if len(added) == 1 else kind + ("es" if kind.endswith("s") else "s")
            out(f"  {getattr(registry, 'origin', who(impls))} registered {len(added)} {kinds}"
                + (f": {', '.join(added)}" if added else ""))
        else:
            out(f"  {hook_name} returned {outcome.get_result()!r}")

    return pm.add_hookcall_monitoring(before, after)

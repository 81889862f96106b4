"""Plugin loading and lookup: the PluginManager, entry points, and typed registries.

Modelled on Datasette (one entry-point group for built-ins and third parties, an environment
variable restricting what loads, ``check_pending`` at start-up) and on tox 4 (register hooks
receive a typed registry, so a plugin cannot return the wrong shape silently).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, Iterable, TypeVar

import pluggy

from ldreg import hookspecs
from ldreg.backends import Backend
from ldreg.errors import PluginError
from ldreg.losses import LossDefinition
from ldreg.responses import ResponseGenerator

ENTRY_POINT_GROUP = "ldreg"
ENV_PLUGINS = "LDREG_PLUGINS"
BUILTIN_PREFIX = "ldreg."

T = TypeVar("T")


def closest(name: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' when one option is close to ``name``, else ''."""
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass
class Registration(Generic[T]):
    name: str
    item: T
    plugin: str


class Registry(Generic[T]):
    """Items of one kind, each under a unique name, each remembering its plugin."""

    kind: str = "item"
    item_type: type = object

    def __init__(self) -> None:
        self._items: dict[str, Registration[T]] = {}
        self.plugin = "<unknown>"

    def add(self, item: T) -> None:
        if not isinstance(item, self.item_type):
            raise PluginError(
                f"plugin {self.plugin!r} registered {item!r} as a {self.kind}; "
                f"expected a {self.item_type.__module__}.{self.item_type.__qualname__}"
            )
        name = getattr(item, "name", "")
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin {self.plugin!r} registered a {self.kind} with no name")
        if name in self._items:
            other = self._items[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {other!r} and {self.plugin!r}; "
                f"uninstall one, or restrict loading with {ENV_PLUGINS}"
            )
        self._items[name] = Registration(name, item, self.plugin)

    def get(self, name: str) -> T:
        try:
            return self._items[name].item
        except KeyError:
            raise PluginError(
                f"no {self.kind} named {name!r}{closest(name, self._items)}; "
                f"installed: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def registrations(self) -> list[Registration[T]]:
        return [self._items[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


class LossRegistry(Registry[LossDefinition]):
    kind = "loss"
    item_type = LossDefinition

    def add(self, item: LossDefinition) -> None:
        super().add(item)
        if not callable(item.compute):
            raise PluginError(f"plugin {self.plugin!r}: loss {item.name!r} has no callable compute")


class ResponseRegistry(Registry[ResponseGenerator]):
    kind = "response type"
    item_type = ResponseGenerator


class BackendRegistry(Registry[Backend]):
    kind = "backend"
    item_type = Backend


@dataclass
class Plugins:
    """Everything the loaded plugins registered, and who registered it."""

    manager: pluggy.PluginManager
    losses: LossRegistry = field(default_factory=LossRegistry)
    responses: ResponseRegistry = field(default_factory=ResponseRegistry)
    backends: BackendRegistry = field(default_factory=BackendRegistry)

    def describe(self) -> list[dict[str, object]]:
        """One row per plugin: name, version, and what it registers (for `ldreg plugins`)."""
        columns = {"losses": self.losses, "response types": self.responses, "backends": self.backends}

        def row(plugin: str, distribution: str = "", version: str = "") -> dict[str, object]:
            return {"plugin": plugin, "distribution": distribution, "version": version, **{c: [] for c in columns}}

        rows = {plugin: row(plugin, dist, version) for dist, plugin, version in _plugin_versions(self.manager)}
        for column, reg in columns.items():
            for r in reg.registrations():
                rows.setdefault(r.plugin, row(r.plugin))[column].append(r.name)  # type: ignore[union-attr]
        return [rows[k] for k in sorted(rows)]


def _plugin_versions(pm: pluggy.PluginManager) -> list[tuple[str, str, str]]:
    out = []
    for plugin, dist in pm.list_plugin_distinfo():
        out.append((dist.project_name, pm.get_name(plugin) or "", dist.version))
    return out


def _allowed(name: str, value: str | None) -> bool:
    """Built-ins always load; third-party plugins load unless LDREG_PLUGINS leaves them out."""
    if name.startswith(BUILTIN_PREFIX) or value is None:
        return True
    allowed = {n.strip() for n in value.split(",") if n.strip()}
    return name in allowed


def make_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A PluginManager with every allowed ``ldreg`` entry point and ``extra_plugins`` loaded."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    restrict = os.environ.get(ENV_PLUGINS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(ep.name, restrict):
            continue
        try:  # pluggy records the distribution, so `ldreg plugins` can show versions
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must say who it is
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    for plugin in extra_plugins:  # e.g. tests, notebooks: named after their module or class
        pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements a hook ldreg does not define: {exc}") from exc
    return pm


def _collect(pm: pluggy.PluginManager, hook_name: str, registry: Registry) -> None:
    """Call each implementation in turn, so the registry knows which plugin is adding."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order: built-ins first
        registry.plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            impl.function(registry=registry)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {registry.plugin!r} failed in {hook_name}: {exc}") from exc
    registry.plugin = "<unknown>"


def load_plugins(extra_plugins: Iterable[object] = ()) -> Plugins:
    """Load every allowed plugin and fill the typed registries."""
    pm = make_manager(extra_plugins)
    plugins = Plugins(manager=pm)
    _collect(pm, "ldreg_register_losses", plugins.losses)
    _collect(pm, "ldreg_register_responses", plugins.responses)
    _collect(pm, "ldreg_register_backends", plugins.backends)
    return plugins


@lru_cache(maxsize=1)
def _default() -> Plugins:
    return load_plugins()


def get_plugins() -> Plugins:
    """The process-wide plugins (loaded once). Tests that install plugins call ``reset()``."""
    return _default()


def reset() -> None:
    _default.cache_clear()

"""Plugin loading and lookup: the PluginManager, entry points, and typed registries.

Modelled on Datasette (one entry-point group for built-ins and third parties, an environment
variable restricting what loads, ``check_pending`` at start-up) and on tox 4 (register hooks
receive a typed registry, so a plugin cannot return the wrong shape silently).

Registration hygiene is checked at start-up and fails loudly (a PluginError naming the plugin
and its distribution), never silently: an ``ldreg_*`` function without ``@hookimpl`` (pluggy
would ignore it and the plugin would register nothing), a misspelt hook (with the nearest real
hook), a loss whose ``defaults`` do not match its ``compute``. Built-ins are the entry points of
the ``ldreg`` distribution itself; ``LDREG_PLUGINS`` selects third-party plugins by
distribution (or entry-point) name and warns about names that match nothing.

Hooks are called through pluggy, once per implementing plugin (``collect``), so that the registry
knows who is adding and pluggy's tracing and hook wrappers still apply; LDREG_TRACE_PLUGINS=1
prints each call and what it registered (``ldreg.plugin_trace``). Plugins also load from a folder
of ``.py`` files (``ldreg.plugin_dir``). A new kind of registry is declared once with ``add_kind``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import types
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

import pluggy

from ldreg import hookspecs, plugin_dir, plugin_trace
from ldreg.backends import Backend
from ldreg.errors import PluginError, closest
from ldreg.losses import LossDefinition
from ldreg.responses import ResponseGenerator, code_fingerprint

ENTRY_POINT_GROUP = "ldreg"
ENV_PLUGINS = "LDREG_PLUGINS"
BUILTIN_DISTRIBUTION = "ldreg"

T = TypeVar("T")


class PluginWarning(UserWarning):
    """Something about the plugin selection is probably not what was meant (e.g. an unknown name)."""


def normalize(distribution: str) -> str:
    """PEP 503 name normalisation: 'LDReg_Hello' and 'ldreg-hello' are one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


@dataclass
class Registration(Generic[T]):
    name: str
    item: T
    plugin: str
    distribution: str = ""
    version: str = ""


class Registry(Generic[T]):
    """Items of one kind, each under a unique name, each remembering its plugin and distribution."""

    kind: str = "item"
    item_type: type = object

    def __init__(self) -> None:
        self._items: dict[str, Registration[T]] = {}
        self.plugin = "<unknown>"
        self.distribution = self.version = ""
        # set by load_plugins: name -> message when an excluded (LDREG_PLUGINS) plugin has it
        self.excluded_lookup: Callable[[str], str | None] | None = None

    @property
    def origin(self) -> str:
        """The adding plugin as messages name it: "plugin 'hello', ldreg-hello 0.1.0"."""
        return _label(self.plugin, self.distribution, self.version)

    def add(self, item: T) -> None:
        """Register ``item`` under its ``name``, remembering the plugin that is adding it.

        Raises a PluginError naming the plugin when ``item`` is not of the registry's item type,
        has an empty ``name``, or has a name another plugin registered (both are named).
        """
        if not isinstance(item, self.item_type):
            raise PluginError(
                f"{self.origin} registered {item!r} as a {self.kind}; "
                f"expected a {self.item_type.__module__}.{self.item_type.__qualname__}"
            )
        name = getattr(item, "name", "")
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"{self.origin} registered a {self.kind} with no name")
        if name in self._items:
            other = self._items[name]
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {other.plugin!r} and {self.plugin!r}; "
                f"uninstall one, or restrict loading with {ENV_PLUGINS}"
            )
        self._items[name] = Registration(name, item, self.plugin, self.distribution, self.version)

    def get(self, name: str) -> T:
        try:
            return self._items[name].item
        except KeyError:
            raise PluginError(self.missing(name)) from None

    def missing(self, name: str) -> str:
        """Why ``name`` is not here: installed but excluded by LDREG_PLUGINS, or not installed."""
        if not isinstance(name, str) or len(name) > 100:  # a huge or odd value: never echoed in full
            shown = repr(name)[:60] + "..." if len(repr(name)) > 60 else repr(name)
            return f"no {self.kind} named {shown}; installed: {', '.join(sorted(self._items)) or 'none'}"
        excluded = self.excluded_lookup(name) if self.excluded_lookup is not None else None
        if excluded:
            return excluded
        return (f"no {self.kind} named {name!r}{closest(name, self._items)}; "
                f"installed: {', '.join(sorted(self._items)) or 'none'}")

    def registration(self, name: str) -> Registration[T]:
        self.get(name)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def registrations(self) -> list[Registration[T]]:
        return [self._items[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


class LossRegistry(Registry[LossDefinition]):
    """Losses; each is checked at registration (callable compute, defaults matching its signature,
    readable constraints that its defaults satisfy) and stamped with the plugin that added it."""

    kind = "loss"
    item_type = LossDefinition

    def add(self, item: LossDefinition) -> None:
        """Register a loss after checking it: ``compute`` callable, ``defaults`` matching its
        signature, constraints readable and satisfied by the defaults (``declaration_problems``);
        then, as every registry, its type, a non-empty name and a name no other plugin took. The
        stored copy's ``origin`` names the plugin, distribution and version."""
        if isinstance(item, LossDefinition):
            if not callable(item.compute):
                raise PluginError(f"{self.origin}: loss {item.name!r} has no callable compute")
            problems = item.declaration_problems()
            if problems:
                raise PluginError(f"{self.origin}: loss {item.name!r} is declared wrongly: {'; '.join(problems)}")
            item = dataclasses.replace(item, origin=self.origin)
        super().add(item)


class ResponseRegistry(Registry[ResponseGenerator]):
    kind = "response type"
    item_type = ResponseGenerator

    def identity(self, name: str) -> dict[str, str]:
        """Who makes this type and in which version of their code: the probing-set cache keys on it,
        so a corrected or upgraded generator never reuses text it made before."""
        r = self.registration(name)
        return {"type": name, "plugin": r.plugin, "distribution": r.distribution, "version": r.version,
                "code": code_fingerprint(r.item)}


class BackendRegistry(Registry[Backend]):
    kind = "backend"
    item_type = Backend


@dataclass(frozen=True)
class Kind:
    """One kind of registered thing: its ``Plugins`` attribute, hook, registry type and the column
    that ``ldreg plugins`` lists it under."""

    attr: str
    hook: str
    registry: type[Registry]
    column: str


KINDS: dict[str, Kind] = {}


def add_kind(attr: str, hook: str, registry: type[Registry], column: str | None = None) -> None:
    """Declare a kind of plugin registration: ``Plugins.<attr>`` is then a ``registry`` filled by
    calling ``hook`` on every plugin, and ``describe()`` lists it under ``column``."""
    KINDS[attr] = Kind(attr, hook, registry, column or attr)


add_kind("losses", "ldreg_register_losses", LossRegistry)
add_kind("responses", "ldreg_register_responses", ResponseRegistry, "response types")
add_kind("backends", "ldreg_register_backends", BackendRegistry)


def _new_registries() -> dict[str, Registry]:
    return {attr: kind.registry() for attr, kind in KINDS.items()}


@dataclass
class Plugins:
    """Everything the loaded plugins registered, and who registered it.

    ``registries`` holds one typed registry per kind (``KINDS``), also reachable as attributes
    (``plugins.losses``). ``sources`` maps each entry-point plugin's name to its (distribution,
    version); ``origins`` maps each plugin loaded from a plugins folder to its file; plugins
    registered in-process (tests, notebooks) have neither. ``excluded`` lists the installed entry
    points that LDREG_PLUGINS left out, so a lookup of something they provide says so.
    """

    manager: pluggy.PluginManager
    registries: dict[str, Registry] = field(default_factory=_new_registries)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    excluded: list[importlib.metadata.EntryPoint] = field(default_factory=list)
    selection: str | None = None
    _excluded_found: dict[str, Registry] | None = field(default=None, repr=False)

    @property
    def losses(self) -> LossRegistry:
        return self.registries["losses"]  # type: ignore[return-value]

    @property
    def responses(self) -> ResponseRegistry:
        return self.registries["responses"]  # type: ignore[return-value]

    @property
    def backends(self) -> BackendRegistry:
        return self.registries["backends"]  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Registry:
        """Kinds declared later with ``add_kind`` (e.g. ``plugins.executors``)."""
        registries = self.__dict__.get("registries") or {}
        if name in registries:
            return registries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _registries(self) -> dict[str, Registry]:
        return self.registries

    def describe(self) -> list[dict[str, object]]:
        """One row per plugin: name, version, origin (the file of a plugins-folder plugin, else "")
        and what it registers, one column per kind (for `ldreg plugins`)."""
        columns = {KINDS[attr].column: reg for attr, reg in self.registries.items() if attr in KINDS}

        def row(plugin: str, distribution: str = "", version: str = "") -> dict[str, object]:
            return {"plugin": plugin, "distribution": distribution, "version": version,
                    "origin": self.origins.get(plugin, ""), **{c: [] for c in columns}}

        rows = {plugin: row(plugin, *self.sources.get(plugin, ("", ""))) for plugin in self._plugin_names()}
        for column, reg in columns.items():
            for r in reg.registrations():
                rows.setdefault(r.plugin, row(r.plugin))[column].append(r.name)  # type: ignore[union-attr]
        return [rows[k] for k in sorted(rows)]

    def versions(self) -> list[dict[str, str]]:
        """Every loaded plugin with its distribution and version (and, for a plugins-folder plugin,
        its ``origin`` file), for a run's record.

        A list of records rather than a mapping: plugin names contain dots, which MongoDB keys
        should not.
        """
        return [{"plugin": name, "distribution": self.sources.get(name, ("", ""))[0],
                 "version": self.sources.get(name, ("", ""))[1],
                 **({"origin": self.origins[name]} if name in self.origins else {})}
                for name in sorted(self._plugin_names())]

    def _plugin_names(self) -> list[str]:
        return [n for n in (self.manager.get_name(p) for p in self.manager.get_plugins()) if n]

    def excluded_message(self, registry: str, name: str) -> str | None:
        """If an entry point excluded by LDREG_PLUGINS provides ``name``, the message saying so.

        Excluded plugins are loaded only here, when a lookup has already failed, into a throwaway
        manager; one that fails to load is simply not found.
        """
        if not self.excluded:
            return None
        if self._excluded_found is None:
            self._excluded_found = _load_excluded(self.excluded)
        found = self._excluded_found[registry]
        if name not in found:
            return None
        r = found._items[name]
        wanted = normalize(r.distribution) if r.distribution else r.plugin
        return (f"{found.kind} {name!r} is installed but excluded by {ENV_PLUGINS}={self.selection!r}: it comes "
                f"from {_label(r.plugin, r.distribution, r.version)}; add {wanted} to {ENV_PLUGINS} (or unset it)")


def _label(plugin: str, distribution: str = "", version: str = "") -> str:
    """How messages name a plugin: "plugin 'hello', ldreg-hello 0.1.0"."""
    return f"plugin {plugin!r}" + (f", {distribution} {version}".rstrip() if distribution else "")


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


def is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    """Built-ins are recognised by their distribution (ldreg itself), never by an entry point's name."""
    return normalize(_distribution(ep)[0]) == BUILTIN_DISTRIBUTION


def select(eps: Iterable[importlib.metadata.EntryPoint], value: str | None
           ) -> tuple[list[importlib.metadata.EntryPoint], list[importlib.metadata.EntryPoint]]:
    """(to load, excluded) under LDREG_PLUGINS=``value``; warns about names no plugin has.

    Built-ins always load. Unset: every plugin loads. Set: a third-party plugin loads when its
    distribution name (PEP 503 normalised) or its entry-point name is listed.
    """
    eps = list(eps)
    if value is None:
        return eps, []
    wanted = {n.strip() for n in value.split(",") if n.strip()}
    third = [ep for ep in eps if not is_builtin(ep)]
    known = {BUILTIN_DISTRIBUTION} | {normalize(_distribution(ep)[0]) for ep in third} | {ep.name for ep in third}
    unknown = sorted(n for n in wanted if normalize(n) not in known and n not in known)
    if unknown:
        choices = sorted({f"{normalize(_distribution(ep)[0]) or ep.name}" for ep in third})
        hints = "".join(closest(n, choices) for n in unknown[:1])
        warnings.warn(f"{ENV_PLUGINS} names {', '.join(map(repr, unknown))}, which no installed plugin has{hints}; "
                      f"installed third-party plugins: {', '.join(choices) or 'none'}", PluginWarning, stacklevel=3)
    normalized = {normalize(n) for n in wanted}
    load, excluded = [], []
    for ep in eps:
        ok = is_builtin(ep) or ep.name in wanted or normalize(_distribution(ep)[0]) in normalized
        (load if ok else excluded).append(ep)
    return load, excluded


def _register_entry_point(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    dist, version = _distribution(ep)
    if pm.has_plugin(ep.name):
        raise PluginError(f"two installed distributions define the ldreg entry point {ep.name!r} "
                          f"(one is {dist or 'unknown'}); uninstall one, or leave one out with {ENV_PLUGINS}")
    try:
        plugin = ep.load()
    except Exception as exc:  # a broken third-party plugin must say who it is
        raise PluginError(f"{_label(ep.name, dist, version)} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    pm.register(plugin, name=ep.name)


def check_hooks(pm: pluggy.PluginManager, label_of: Callable[[str], tuple[str, bool]]) -> None:
    """Fail loudly on hooks pluggy would ignore or cannot match, naming the plugin.

    An ``ldreg_*`` function without ``@hookimpl`` registers nothing (pluggy skips it), and an
    ``@hookimpl`` whose name is not a hook is never called: both are errors, with the nearest hook.
    Functions a module merely imported are not its own and are skipped.
    """
    hooks = sorted(n for n in vars(hookspecs) if n.startswith("ldreg_"))
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else None
        problems = []
        for attr in sorted(a for a in dir(plugin) if a.startswith("ldreg_")):
            obj = getattr(plugin, attr, None)
            if not callable(obj) or (module and getattr(obj, "__module__", module) != module):
                continue
            marked = pm.parse_hookimpl_opts(plugin, attr) is not None
            nearest = difflib.get_close_matches(attr, hooks, n=1, cutoff=0.6)
            if attr in hooks and not marked:
                problems.append(f"{attr} lacks @hookimpl, so pluggy ignores it and it registers nothing: "
                                f"decorate it with @ldreg.hookspecs.hookimpl")
            elif attr not in hooks and marked:
                problems.append(f"{attr} is not an ldreg hook" + (f" (did you mean {nearest[0]}?)" if nearest else "")
                                + f"; the hooks are {', '.join(hooks)}")
            elif attr not in hooks and nearest:
                problems.append(f"{attr} is neither decorated with @hookimpl nor an ldreg hook "
                                f"(did you mean {nearest[0]}?)")
        if problems:
            label, installed = label_of(name)
            hint = f" (to run without it, leave it out with {ENV_PLUGINS}=<the plugins you want>)" if installed else ""
            raise PluginError(f"{label}: {'; '.join(problems)}{hint}")


def make_manager(extra_plugins: Iterable[object] = (), eps: Iterable[importlib.metadata.EntryPoint] = (),
                 files: Iterable[Path] = ()) -> pluggy.PluginManager:
    """A PluginManager with the entry points ``eps``, the plugin ``files`` (a plugins folder's
    ``.py`` files, each named after its file) and ``extra_plugins`` loaded and checked.

    With LDREG_TRACE_PLUGINS=1 every hook call of the manager is printed to stderr.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if plugin_trace.enabled():
        plugin_trace.trace_hook_calls(pm)
    sources, origins = {}, {}
    for ep in eps:
        _register_entry_point(pm, ep)
        sources[ep.name] = _distribution(ep)
    for path in files:
        name = path.stem
        if pm.has_plugin(name) or name in origins:
            other = origins.get(name) or _label(name, *sources.get(name, ("", "")))
            raise PluginError(f"plugin file {path}: the plugin name {name!r} is taken by {other}; rename the file")
        pm.register(plugin_dir.load_file(path), name=name)
        origins[name] = str(path)
    for plugin in extra_plugins:  # e.g. tests, notebooks: named after their module or class
        pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)

    def label_of(name: str) -> tuple[str, bool]:
        if name in origins:
            return f"plugin {name!r} ({origins[name]})", False
        return _label(name, *sources.get(name, ("", ""))), name in sources

    check_hooks(pm, label_of)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # pragma: no cover - check_hooks reports these first
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r} implements a hook ldreg does not define: {exc}") from exc
    return pm


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.hookwrapper or impl.wrapper)


def collect(pm: pluggy.PluginManager, hook_name: str, registry: Registry,
            sources: dict[str, tuple[str, str]]) -> None:
    """Call ``hook_name`` on each implementing plugin in turn, through pluggy, so the registry knows
    which plugin is adding.

    Each call is a pluggy subset hook caller holding one plugin's implementation (and every hook
    wrapper), so pluggy's tracing, monitoring and wrappers see it as an ordinary hook call.
    """
    impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if not _is_wrapper(i)]
    plugins = list({id(i.plugin): i.plugin for i in impls}.values())  # registration order: built-ins first
    for plugin in plugins:
        others = [p for p in plugins if p is not plugin]
        registry.plugin = pm.get_name(plugin) or repr(plugin)
        registry.distribution, registry.version = sources.get(registry.plugin, ("", ""))
        try:
            pm.subset_hook_caller(hook_name, remove_plugins=others)(registry=registry)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{registry.origin} failed in {hook_name}: {type(exc).__name__}: {exc}") from exc
    registry.plugin, registry.distribution, registry.version = "<unknown>", "", ""


def _load_excluded(eps: list[importlib.metadata.EntryPoint]) -> dict[str, Registry]:
    """What the excluded plugins would register (only to explain a failed lookup)."""
    found = _new_registries()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    sources = {}
    for ep in eps:
        try:
            _register_entry_point(pm, ep)
            sources[ep.name] = _distribution(ep)
        except Exception:  # noqa: BLE001 - a broken excluded plugin is simply not found
            continue
    for attr, kind in KINDS.items():
        try:
            collect(pm, kind.hook, found[attr], sources)
        except Exception:  # noqa: BLE001
            continue
    return found


def load_plugins(extra_plugins: Iterable[object] = (), files: Iterable[str | Path] = (),
                 third_party: bool = True) -> Plugins:
    """Load every allowed plugin (entry points under LDREG_PLUGINS, every file of LDREG_PLUGINS_DIR,
    the plugin ``files`` given, then ``extra_plugins``) and fill the typed registries.

    ``third_party=False`` loads only ldreg's own built-ins besides ``files`` and ``extra_plugins``
    (a plugin's tests, isolated from whatever else is installed, its own installed copy included).
    """
    selection = os.environ.get(ENV_PLUGINS) if third_party else ""
    load, excluded = select(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), selection)
    files = (plugin_dir.plugin_files() if third_party else []) + [Path(f).resolve() for f in files]
    pm = make_manager(extra_plugins, load, files)
    sources = {ep.name: _distribution(ep) for ep in load}
    plugins = Plugins(manager=pm, sources=sources, origins={f.stem: str(f) for f in files},
                      excluded=excluded, selection=selection)
    for attr, kind in KINDS.items():
        registry = plugins.registries[attr]
        collect(pm, kind.hook, registry, sources)
        registry.excluded_lookup = lambda name, attr=attr: plugins.excluded_message(attr, name)
    return plugins


@lru_cache(maxsize=1)
def _default() -> Plugins:
    return load_plugins()


def get_plugins() -> Plugins:
    """The process-wide plugins (loaded once). Tests that install plugins call ``reset()``."""
    return _default()


def reset() -> None:
    _default.cache_clear()


# ---- sweep executors (ldreg.sweep): `local`, `ray`, `slurm` built in, third-party ones alike
from ldreg.sweep.executor import Executor  # noqa: E402 - light: no torch, no engines


class ExecutorRegistry(Registry[Executor]):
    """Sweep executors (``ldreg sweep run --executor NAME``)."""

    kind = "executor"
    item_type = Executor


add_kind("executors", "ldreg_register_executors", ExecutorRegistry)


# ---- source schemes (ldreg.sources): `pretrained:` and `generated:`, registered by the paper app
from ldreg.sources import SourceScheme  # noqa: E402 - light: no torch, no app


class SourceRegistry(Registry[SourceScheme]):
    """``NAME:ARG`` prefixes of ``model.base`` and ``data.source`` (``ldreg.sources``)."""

    kind = "source scheme"
    item_type = SourceScheme


add_kind("source_schemes", "ldreg_register_sources", SourceRegistry, "source schemes")


# ---- judges (ldreg.judging): pairwise judges for `ldreg winrate`, built-in and third-party alike
from ldreg.judging.judge import Judge  # noqa: E402 - light: no torch


class JudgeRegistry(Registry[Judge]):
    """Pairwise judges (``ldreg winrate --judge NAME``)."""

    kind = "judge"
    item_type = Judge


add_kind("judges", "ldreg_register_judges", JudgeRegistry)

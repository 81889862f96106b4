"""Plugins from a folder of plain ``.py`` files, for quick experiments without packaging.

Like Datasette's ``--plugins-dir``: ``ldreg --plugins-dir DIR ...`` (or ``LDREG_PLUGINS_DIR=DIR``,
several folders separated by ``os.pathsep``) imports every ``.py`` file of DIR, in name order, and
registers it as a plugin named after the file. Such plugins always load (LDREG_PLUGINS selects
installed distributions only); ``ldreg plugins`` shows each with its path as origin. A file that
cannot be imported gives one message naming the file and the error, never a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
import types
from pathlib import Path

from ldreg.errors import PluginError

ENV_PLUGINS_DIR = "LDREG_PLUGINS_DIR"
MODULE_PREFIX = "_ldreg_plugins_dir_"  # sys.modules names: never shadows a real module


def folders(value: str | None = None) -> list[Path]:
    """The folders named by ``value`` (default: LDREG_PLUGINS_DIR), each checked to exist."""
    value = os.environ.get(ENV_PLUGINS_DIR, "") if value is None else value
    found = []
    for part in (p.strip() for p in value.split(os.pathsep)):
        if not part:
            continue
        path = Path(part).expanduser()
        if not path.is_dir():
            raise PluginError(f"{ENV_PLUGINS_DIR}={part!r}: no such folder; set it (or --plugins-dir) "
                              f"to a folder of plugin .py files")
        found.append(path.resolve())
    return found


def plugin_files(value: str | None = None) -> list[Path]:
    """Every ``.py`` file of the plugin folders, in name order (``__init__.py`` and ``_*`` skipped)."""
    return [f for d in folders(value) for f in sorted(d.glob("*.py")) if not f.name.startswith("_")]


def load_file(path: Path) -> types.ModuleType:
    """Import one plugin file as a fresh module (re-read at every load, so edits take effect).

    The module is kept in ``sys.modules`` under a prefixed name, so that its classes can be
    inspected (the probing cache hashes a generator's source file) and nothing real is shadowed.
    """
    name = MODULE_PREFIX + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise PluginError(f"plugin file {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's file: one line naming it
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise PluginError(f"plugin file {path}{_line(exc, path)} failed to load: {type(exc).__name__}: "
                          f"{_clip(exc)}; fix the file or move it out of the plugins folder") from exc
    return module


def _line(exc: BaseException, path: Path) -> str:
    """":LINE" of the error in the plugin file itself, when it is there."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f":{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f":{frames[-1].lineno}" if frames else ""


def _clip(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc.msg if isinstance(exc, SyntaxError) else exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The executor contract: how a sweep's workers are started, whatever engine starts them.

An executor never schedules configs itself: it starts workers (``ldreg.sweep.worker``) where its
engine puts them, and the workers claim configs from the database. So an executor is small, a
third-party one is a plugin like any other (``ldreg_register_executors``), and every executor
leaves the same records behind. Nothing here imports torch or the engines.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ldreg.errors import LdregError, preview

ENV_PASSED = ("LDREG_MONGO_URL", "LDREG_DB", "LDREG_HOME", "LDREG_HEARTBEAT_S", "LDREG_PLUGINS", "LDREG_DEBUG")


@dataclass
class SweepJob:
    """What an executor gets: the sweep, how many configs wait, the settings every worker needs."""

    sweep_id: str
    pending: int
    env: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    log_dir: Path = Path(".")
    # called with no arguments while waiting (draws the progress bar); returns when the caller should look again
    poll: Callable[[], None] = lambda: None


class Executor:
    """Starts the workers of a sweep. Subclasses set ``name`` and implement ``launch``.

    ``options``: the names this executor accepts, each with a one-line help; anything else is refused
    with the list. ``remote``: whether, with these options, workers may run on other machines (then a
    loopback database is refused: they could not reach it).
    """

    name: str = ""
    description: str = ""
    options: dict[str, str] = {}

    def check(self, options: dict[str, Any], url: str) -> None:
        """Refuse unknown options and, for remote workers, a database only this machine can reach."""
        for key in options:
            if key not in self.options:
                from ldreg.errors import closest

                raise LdregError(f"executor {self.name!r}: no option {preview(key, 40, quote=False)}"
                                 f"{closest(str(key), self.options)}; it accepts: {', '.join(self.options) or 'none'}")
        if self.remote(options):
            refuse_loopback(url, self.name)

    def remote(self, options: dict[str, Any]) -> bool:
        return False

    def launch(self, job: SweepJob) -> None:  # pragma: no cover - the contract
        raise NotImplementedError


def require(module: str, extra: str, executor: str):
    """Import an engine, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LdregError(f"executor {executor!r} needs the {module} package, which is not installed: "
                         f"pip install 'ldreg[{extra}]'") from None


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hosts_of(url: str) -> list[str]:
    """The hosts of a MongoDB URL (without credentials), e.g. ['db1.lab', 'db2.lab']."""
    rest = url.split("://", 1)[-1]
    rest = rest.rsplit("@", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    hosts = []
    for part in filter(None, rest.split(",")):
        if part.startswith("["):
            hosts.append(part[1:].split("]", 1)[0])
        else:
            hosts.append(part.rsplit(":", 1)[0] if part.count(":") == 1 else part)
    return hosts


def refuse_loopback(url: str, executor: str) -> None:
    """Workers on other machines cannot reach a server that binds loopback (the embedded one does)."""
    if url.startswith("mongodb+srv://"):
        return
    hosts = hosts_of(url)
    if hosts and all(_is_loopback(h) for h in hosts):
        from ldreg.store.connection import redact

        raise LdregError(
            f"executor {executor!r} runs workers on other machines, but the database is {redact(url)}, which only "
            f"this machine can reach (the embedded server binds loopback and has no authentication). Set "
            f"LDREG_MONGO_URL to a MongoDB that every machine reaches, e.g. a replica set "
            f"(docs/sweeps.md), or run the sweep with --executor local")


def worker_env(url: str) -> dict[str, str]:
    """The ldreg settings a worker needs, wherever it runs: the database above all."""
    env = {k: os.environ[k] for k in ENV_PASSED if os.environ.get(k)}
    env["LDREG_MONGO_URL"] = url
    from ldreg import config

    env.setdefault("LDREG_HOME", str(config.home()))
    return env


def option(options: dict[str, Any], key: str, default: Any, kind: type, executor: str) -> Any:
    """One option, converted (``workers=2`` arrives as text from the command line)."""
    value = options.get(key, default)
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LdregError(f"executor {executor!r}: option {key}={preview(value, 40, quote=False)}: "
                         f"expected {kind.__name__}") from None

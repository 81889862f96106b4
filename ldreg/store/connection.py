"""Which MongoDB ldreg talks to, and how: LDREG_MONGO_URL if set, else the embedded server.

Clients get short timeouts so that a dead database turns into a quick, clear error (or, in
the sink, a quick switch to the spool) instead of a 30-second hang. URLs may carry
credentials: everything that reaches a log or an error message goes through ``redact``.
"""

from __future__ import annotations

import re

import pymongo
from pymongo.database import Database

from ldreg import config
from ldreg.errors import DatabaseError

TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 60.0
ALIAS = "default"

_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/?#]*)@", re.IGNORECASE)
_registered: tuple[str, str] | None = None


def redact(url: str) -> str:
    """``mongodb://user:secret@host/db`` -> ``mongodb://***@host/db``."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", url)


def _scrub(text: str, url: str) -> str:
    """Remove the URL's credentials from free text (a driver's error message may echo them)."""
    text = text.replace(url, redact(url))
    match = _USERINFO.search(url)
    if match:
        userinfo = match.group("userinfo")
        password = userinfo.partition(":")[2]
        for secret in (userinfo, password):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
    return text


def mongo_url() -> str:
    """LDREG_MONGO_URL when set, else the embedded server's URL (started if need be)."""
    url = config.mongo_url_setting()
    if url:
        return url
    from ldreg.store.server import ensure_running

    return ensure_running()


def open_client(url: str, timeout_s: float = TIMEOUT_S) -> pymongo.MongoClient:
    """A pymongo client that gives up on an unreachable server after ``timeout_s``."""
    ms = int(timeout_s * 1000)
    try:
        return pymongo.MongoClient(
            url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=int(SOCKET_TIMEOUT_S * 1000)
        )
    except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
        raise DatabaseError(f"invalid MongoDB URL {redact(url)}: {_scrub(str(exc), url)}") from None


def check_reachable(url: str, timeout_s: float = TIMEOUT_S) -> None:
    """Raise one clear DatabaseError (credentials hidden) if nothing answers a ping at ``url``."""
    client = open_client(url, timeout_s)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        reason = _scrub(str(exc).split(", Timeout:")[0].split("\n")[0], url)
        raise DatabaseError(
            f"cannot reach MongoDB at {redact(url)} within {timeout_s:g} s ({reason}); "
            "start the embedded server with `ldreg db start` or fix LDREG_MONGO_URL"
        ) from None
    finally:
        client.close()


def connect(url: str | None = None, db_name: str | None = None) -> Database:
    """Register mongoengine's default connection and return the same database for pymongo use."""
    global _registered
    import mongoengine

    url = url or mongo_url()
    db_name = db_name or config.db_name()
    check_reachable(url)
    if _registered != (url, db_name):
        mongoengine.disconnect(ALIAS)
        ms = int(TIMEOUT_S * 1000)
        mongoengine.connect(
            db=db_name, host=url, alias=ALIAS, uuidRepresentation="standard",
            serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=int(SOCKET_TIMEOUT_S * 1000),
        )
        _registered = (url, db_name)
    return mongoengine.get_db(ALIAS)


def database(db: Database | None = None) -> Database:
    """``db`` when a caller passes one (tests, notebooks), else the configured database."""
    return db if db is not None else connect()


def disconnect() -> None:
    """Forget the registered connection (tests, or before pointing ldreg at another server)."""
    global _registered
    import mongoengine

    mongoengine.disconnect(ALIAS)
    _registered = None

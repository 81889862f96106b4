"""Where ldreg keeps things, and the few settings read from the environment.

LDREG_HOME       project-local state (embedded database, spool, caches, reports); default ./.ldreg
LDREG_MONGO_URL  use this MongoDB instead of starting the embedded server
LDREG_DB         the database name; default "ldreg"
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "LDREG_HOME"
ENV_MONGO_URL = "LDREG_MONGO_URL"
ENV_DB = "LDREG_DB"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or ".ldreg").resolve()


def db_name() -> str:
    return os.environ.get(ENV_DB) or "ldreg"


def mongo_url_setting() -> str | None:
    return os.environ.get(ENV_MONGO_URL) or None


def cache_dir() -> Path:
    """Reusable artefacts: the pretrained base model, probing sets, tokenizers."""
    return home() / "cache"


def reports_dir() -> Path:
    return home() / "reports"

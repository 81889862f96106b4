"""Checkpoints for ``ldreg run --resume``: the trainer's full state, written atomically.

One file per run (the latest wins), under LDREG_HOME/checkpoints/<database>, so that a crash
leaves either the previous checkpoint or the new one, never half of one. Run ids are unique within
a database and never reused there, so a file can never be mistaken for another run's.
"""

from __future__ import annotations

import os
from pathlib import Path

from ldreg import config
from ldreg.errors import LdregError


def checkpoint_path(run_id: int) -> Path:
    return config.home() / "checkpoints" / config.db_name() / f"run-{run_id}.pt"


def save(run_id: int, state: dict) -> Path:
    path = checkpoint_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch  # here, so that `ldreg runs delete` and `mark-failed` (exists/discard) need no torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def exists(run_id: int) -> bool:
    return checkpoint_path(run_id).exists()


def load(run_id: int) -> dict:
    path = checkpoint_path(run_id)
    if not path.exists():
        raise LdregError(f"run {run_id} has no checkpoint at {path}; it can only be rerun "
                         f"(checkpoints are written every `checkpoint_every` steps)")
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def discard(run_id: int) -> None:
    checkpoint_path(run_id).unlink(missing_ok=True)

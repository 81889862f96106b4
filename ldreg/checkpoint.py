"""Checkpoints for ``ldreg run --resume``: the trainer's full state, written atomically.

One file per run (the latest wins), under LDREG_HOME/checkpoints, so that a crash leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ldreg import config
from ldreg.errors import LdregError


def checkpoint_path(run_id: int) -> Path:
    return config.home() / "checkpoints" / f"run-{run_id}.pt"


def save(run_id: int, state: dict) -> Path:
    path = checkpoint_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(run_id: int) -> dict:
    path = checkpoint_path(run_id)
    if not path.exists():
        raise LdregError(f"run {run_id} has no checkpoint at {path}; it can only be rerun "
                         f"(checkpoints are written every `checkpoint_every` steps)")
    return torch.load(path, map_location="cpu", weights_only=False)


def discard(run_id: int) -> None:
    checkpoint_path(run_id).unlink(missing_ok=True)

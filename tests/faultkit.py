"""Shared tools of the fault tests: a loss that injects faults at chosen steps, and comparisons
of a disturbed run with an undisturbed one (observations equal, each once; each metric step once)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition
from ldreg.registry import load_plugins

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


class FaultySFT:
    """SFT under the name ``faulty_sft`` that runs ``actions[n]`` just before its n-th call.

    One call is one optimiser step, so an action fires at a known step of a real run.
    """

    def __init__(self, actions: dict[int, Callable[[], None]] | None = None):
        self.actions, self.calls = dict(actions or {}), 0

    @hookimpl
    def ldreg_register_losses(self, registry):
        sft = load_plugins().losses.get("sft")

        def compute(logps):
            self.calls += 1
            action = self.actions.get(self.calls)
            if action is not None:
                action()
            return sft.compute(logps)

        registry.add(LossDefinition(name="faulty_sft", compute=compute, description="SFT with injected faults"))



class Crash(RuntimeError):
    """A simulated crash: as far as the run can tell, its process died mid-step."""


class CrashingSFT:
    """SFT under the name ``crashy_sft`` that raises Crash on its ``crash_on``-th call (None: never),
    so one plugin object gives both the crashed run and the undisturbed one it is compared with."""

    def __init__(self, crash_on: int | None):
        self.calls, self.crash_on = 0, crash_on

    @hookimpl
    def ldreg_register_losses(self, registry):
        sft = load_plugins().losses.get("sft")

        def compute(logps):
            self.calls += 1
            if self.calls == self.crash_on:
                raise Crash(f"simulated crash at call {self.calls}")
            return sft.compute(logps)

        registry.add(LossDefinition(name="crashy_sft", compute=compute, description="SFT that crashes"))

def kill_server(server) -> None:
    """SIGKILL the embedded server (no clean shutdown, as a crash or an OOM kill would)."""
    os.kill(server.status().pid, signal.SIGKILL)


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)


def observations(db, run_id: int) -> dict:
    return {(d["kind"], d["stage_index"], d["step"], d["probe_set"], d["response_type"], d.get("update_type")):
            d["values"] for d in db.observations.find({"run_id": run_id})}


def assert_same_observations(expected_db, expected_id: int, got_db, got_id: int) -> None:
    """Every bucket of the undisturbed run is there with equal values, and no other, each once."""
    expected, got = observations(expected_db, expected_id), observations(got_db, got_id)
    assert sorted(got) == sorted(expected), "lost or extra observations"
    for key, values in expected.items():
        for quantity, v in values.items():
            assert got[key][quantity] == pytest.approx(v, rel=1e-5, abs=1e-6), (key, quantity)
    assert got_db.observations.count_documents({"run_id": got_id}) == len(expected), "duplicated observations"


def assert_metrics_once(db, run_id: int, steps: int, names=("loss", "grad_norm", "lr")) -> None:
    """Every metric step 1..steps stored exactly once, in order."""
    for name in names:
        doc = db.metrics.find_one({"run_id": run_id, "name": name})
        assert doc is not None, f"metric {name} missing"
        assert doc["steps"] == list(range(1, steps + 1)), f"metric {name}: {doc['steps']}"
        assert len(doc["values"]) == steps

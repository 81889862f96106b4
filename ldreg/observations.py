"""What leaves the engine: observations, and the sink interface that carries them away.

The engine (probes, influence, eNTK) knows nothing of databases. It hands each observation to a
sink; the store's sink buckets them into MongoDB, a test's sink keeps them in a list. One
observation is one bucket: a run's values at one step for one probing set and response type,
as per-example arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class Observation:
    """Per-example values of one kind at one step.

    ``kind``: "probe" (log-probs and friends per response type), "influence" (one-step
    influence, ``update_type`` set), "entk" (a Gram matrix, flattened, in ``values["gram"]``),
    "batch" (||G|| and energy of the updating batch), "squeeze" and "digits" (the simulations).
    ``values`` maps a quantity name to one float per entry of ``example_ids``.
    """

    kind: str
    step: int
    examples_seen: int
    stage: str
    stage_index: int
    probe_set: str
    response_type: str
    example_ids: list[int]
    values: dict[str, list[float]]
    update_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ObservationSink(Protocol):
    """Where observations go. ``emit`` must not block training for long."""

    def emit(self, obs: Observation) -> None: ...

    def close(self) -> None: ...


class ListSink:
    """Keeps observations in memory: for tests and for runs with no database."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []

    def emit(self, obs: Observation) -> None:
        self.observations.append(obs)

    def close(self) -> None:
        pass

"""A Sacred run held open across someone else's training loop.

``tracking.run_tracked`` runs a body function from start to end; a trainer callback instead sees
the start and the end as separate events. ``OpenRun`` runs ``run_tracked`` in a thread whose body
hands its ``RunContext`` to the caller and waits until ``finish`` (or ``fail``) is called, so the
run's record, heartbeat, captured output and final status are exactly those of an ldreg run.
If the process dies before ``finish``, the heartbeat stops and ``ldreg runs`` shows it as DEAD.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Mapping, Sequence

from ldreg.errors import DatabaseError
from ldreg.tracking import RunContext, run_tracked

START_WAIT_S = 120.0  # the run's start is a few database writes; this bounds a hung server


class OpenRun:
    """Start a tracked run now; ``context`` is its RunContext until ``finish`` or ``fail``."""

    def __init__(self, name: str, run_config: dict[str, Any], *, url: str, tags: Sequence[str] = (),
                 source_packages: Sequence[str] = ("ldreg",), dependencies: Mapping[str, str] | None = None):
        self._started: queue.Queue = queue.Queue()
        self._end = threading.Event()
        self._outcome: dict[str, Any] = {}
        self._returned: dict[str, Any] = {}

        def body(ctx: RunContext) -> dict[str, Any]:
            self._started.put(ctx)
            self._end.wait()
            if "error" in self._outcome:
                raise self._outcome["error"]
            return self._outcome.get("result", {})

        def target() -> None:
            try:
                self._returned["value"] = run_tracked(name, run_config, body, url=url, tags=list(tags),
                                                      source_packages=source_packages, dependencies=dependencies)
            except BaseException as exc:  # handed to the caller by finish(), or at start
                self._returned["error"] = exc
                self._started.put(None)

        self._thread = threading.Thread(target=target, name=f"ldreg-open-run-{name}", daemon=True)
        self._thread.start()
        try:
            ctx = self._started.get(timeout=START_WAIT_S)
        except queue.Empty:
            raise DatabaseError(f"the run {name!r} did not start within {START_WAIT_S:g} s: the database did not "
                                f"answer; check `ldreg db status`") from None
        if ctx is None:
            raise self._returned["error"]
        self.context: RunContext = ctx

    @property
    def run_id(self) -> int:
        return self.context.run_id

    def finish(self, result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """End the run as COMPLETED with ``result``; raises what ``run_tracked`` raised (e.g. RunNotSaved)."""
        self._outcome["result"] = result
        return self._join()

    def fail(self, error: BaseException) -> None:
        """End the run as FAILED (INTERRUPTED for a KeyboardInterrupt) with ``error``; never raises it again."""
        self._outcome["error"] = error
        try:
            self._join()
        except BaseException as exc:
            if exc is not error:
                raise

    def _join(self) -> tuple[int, dict[str, Any]]:
        self._end.set()
        self._thread.join()
        if "error" in self._returned:
            raise self._returned["error"]
        return self._returned["value"]

"""Running a sweep: store it (or find it), requeue what failed, hand the workers to an executor.

Running the same sweep again is how it resumes: COMPLETED configs are skipped, FAILED and
interrupted ones go back to the queue and resume from their runs' checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ldreg import config
from ldreg.errors import LdregError
from ldreg.sweep import store
from ldreg.sweep.definition import Sweep
from ldreg.sweep.executor import SweepJob, worker_env


@dataclass
class SweepOutcome:
    sweep_id: str
    counts: dict[str, int]
    created: bool
    requeued: int
    run_ids: dict[int, int | None] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.counts.get("completed", 0) == sum(self.counts.values())


def log_dir(sweep_id: str):
    return config.home() / "sweeps" / sweep_id


def run_sweep(sweep: Sweep | str, *, executor: str | None = None, options: dict[str, Any] | None = None,
              progress: bool = True, plugins=None) -> SweepOutcome:
    """Run ``sweep`` (a definition, or the id of a stored one) until no config is left to claim."""
    from ldreg.registry import get_plugins
    from ldreg.store.connection import connect, mongo_url

    plugins = plugins or get_plugins()
    url = mongo_url()
    db = connect()
    if isinstance(sweep, str):
        doc = store.get(db, sweep)
        sweep_id, created = sweep, False
        chosen = doc.get("executor") or {}
    else:
        created = store.save(db, sweep)
        sweep_id = sweep.id
        chosen = {"name": sweep.executor.name, "options": sweep.executor.options}
    name = executor or chosen.get("name") or "local"
    opts = {**(chosen.get("options") or {} if name == chosen.get("name") else {}), **(options or {})}
    runner = plugins.executors.get(name)
    runner.check(opts, url)
    requeued = store.requeue_failed(db, sweep_id)
    rows = store.entries(db, sweep_id)
    pending = sum(store.counts(rows).get(s, 0) for s in ("queued", "running"))
    bar = ProgressBar(db, sweep_id, len(rows)) if progress else None
    if pending:
        job = SweepJob(sweep_id=sweep_id, pending=pending, env=worker_env(url), options=opts,
                       log_dir=log_dir(sweep_id), poll=bar.update if bar else (lambda: None))
        try:
            runner.launch(job)
        finally:
            if bar:
                bar.close()
    rows = store.entries(db, sweep_id)
    return SweepOutcome(sweep_id, store.counts(rows), created, requeued, {r["index"]: r.get("run_id") for r in rows})


class ProgressBar:
    """Configs finished out of all, redrawn from the database while the workers run."""

    def __init__(self, db, sweep_id: str, total: int):
        from tqdm import tqdm

        self.db, self.sweep_id = db, sweep_id
        self.bar = tqdm(total=total, desc=f"sweep {sweep_id}", unit="config", dynamic_ncols=True, mininterval=2)
        self.update()

    def update(self) -> None:
        try:
            counts = store.counts(store.entries(self.db, self.sweep_id))
        except Exception:  # noqa: BLE001 - a missed redraw is harmless
            return
        done = counts["completed"] + counts["failed"]
        self.bar.set_postfix_str(f"running {counts['running']}, failed {counts['failed']}", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.update()
        self.bar.close()


def check_outcome(outcome: SweepOutcome) -> None:
    """A sweep that ends with failed configs is an error naming them and the command that resumes."""
    failed = outcome.counts.get("failed", 0)
    if failed:
        raise LdregError(f"sweep {outcome.sweep_id}: {failed} config(s) FAILED ({outcome.counts['completed']} "
                         f"completed); `ldreg sweep status {outcome.sweep_id}` shows why; "
                         f"`ldreg sweep run {outcome.sweep_id}` resumes them from their checkpoints")

"""Sacred runs: every ldreg experiment is a Sacred run recorded by a MongoObserver.

The run documents stay in Sacred's own format (config, host, sources, status, captured output,
heartbeat, result, metrics) so that Omniboard and incense read them unchanged. Per-example
observations do not go through ``log_scalar``: they go to ldreg's bucketed collection, linked by
the Sacred run id.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

with warnings.catch_warnings():  # Sacred 0.8.7 imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    from sacred import Experiment
    from sacred.observers import MongoObserver
    from sacred.settings import SETTINGS
    from sacred.utils import apply_backspaces_and_linefeeds

from ldreg import config

SETTINGS.CAPTURE_MODE = "sys"  # "fd" breaks under pytest's capture and loses tqdm's carriage returns
SETTINGS.DISCOVER_SOURCES = "imported"

RUNS_COLLECTION = "runs"  # Sacred's default, what Omniboard reads

log = logging.getLogger("ldreg.tracking")


class DurableMongoObserver(MongoObserver):
    """Sacred's MongoObserver, except that metrics survive a database outage.

    Sacred hands the metrics logged since the last heartbeat to ``log_metrics`` once and drops
    them if the write fails. Here they wait in memory, per metric, and go out with the next
    heartbeat or the final event; a metric is forgotten only once written, so none is written twice.
    If the database is still down when the run ends, they are saved beside Sacred's own failure file.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, dict[str, list]] = {}

    def log_metrics(self, metrics_by_name, info):
        for name, m in metrics_by_name.items():
            slot = self.pending.setdefault(name, {"steps": [], "values": [], "timestamps": []})
            for key in slot:
                slot[key].extend(m[key])
        self._flush_metrics(info)

    def _flush_metrics(self, info) -> None:
        from pymongo.errors import PyMongoError

        for name in list(self.pending):
            try:
                super().log_metrics({name: self.pending[name]}, info)
            except PyMongoError as exc:
                log.warning("metrics kept for later: the database did not answer (%s)", type(exc).__name__)
                return
            del self.pending[name]

    def _final(self, event: str, **kwargs):
        self._flush_metrics(self.run_entry.get("info", {}))
        if self.pending and self.failure_dir:
            path = Path(self.failure_dir) / f"metrics-run-{self.run_entry['_id']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.pending, default=str))
            log.warning("the database is down: metrics of run %s saved in %s", self.run_entry["_id"], path)
        return getattr(super(), event)(**kwargs)

    def completed_event(self, stop_time, result):
        return self._final("completed_event", stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        return self._final("interrupted_event", interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        return self._final("failed_event", fail_time=fail_time, fail_trace=fail_trace)


@dataclass
class RunContext:
    """What the experiment body gets: the Sacred run id and a metric logger."""

    run_id: int
    log_scalar: Callable[[str, float, int], None]
    add_artifact: Callable[[str, str], None]
    info: dict[str, Any]


Body = Callable[[RunContext], dict[str, Any]]


def run_tracked(name: str, run_config: dict[str, Any], body: Body, *, url: str, tags: list[str] = (),
                db_name: str | None = None, spec_path: str | Path | None = None, comment: str = "",
                overwrite: int | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``body`` as a Sacred experiment named ``name`` observed into MongoDB; return (run id, result).

    ``run_config`` is what Sacred records as the run's config (an experiment spec as a dict, or a
    simulation's settings). ``overwrite``: continue the run with this id (``--resume``).
    Sacred marks the run FAILED on an exception and INTERRUPTED on Ctrl-C; ``body`` is
    responsible for flushing what it computed before it re-raises (the runner's sink does).
    """
    ex = Experiment(name, save_git_info=False)
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.add_config(run_config)
    ex.observers.append(DurableMongoObserver(url=url, db_name=db_name or config.db_name(), overwrite=overwrite,
                                      failure_dir=str(config.home() / "spool" / "sacred")))

    @ex.main
    def main(_run):
        ctx = RunContext(run_id=_run._id, log_scalar=lambda n, v, s: _run.log_scalar(n, v, s),
                         add_artifact=lambda path, name: _run.add_artifact(path, name=name), info=_run.info)
        _run.info["tags"] = list(tags)
        if spec_path:
            _run.add_resource(str(spec_path))
        return body(ctx)

    run = ex.run(meta_info={"comment": comment, "tags": list(tags)},
                 options={"--name": name, "--loglevel": "WARNING"})
    return run._id, run.result

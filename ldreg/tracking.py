"""Sacred runs: every ldreg experiment is a Sacred run recorded by a MongoObserver.

The run documents stay in Sacred's own format (config, host, sources, status, captured output,
heartbeat, result, metrics) so that Omniboard and incense read them unchanged. Per-example
observations do not go through ``log_scalar``: they go to ldreg's bucketed collection, linked by
the Sacred run id.

What a run's record holds beyond Sacred's defaults, so that a reader can tell what ran and redo it:
the spec files exactly as written and the resolved config (artifacts), the source of every module
of ldreg and of each plugin package that was loaded (sources), plugin distributions and versions
(dependencies), the run's readable log lines without progress-bar control characters (captured
output), and, across ``--resume``, the original start time, artifacts and output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

with warnings.catch_warnings():  # Sacred 0.8.7 imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    from sacred import Experiment
    from sacred.dependencies import PackageDependency
    from sacred.metrics_logger import linearize_metrics
    from sacred.observers import MongoObserver
    from sacred.observers.mongo import force_bson_encodeable
    from sacred.settings import SETTINGS
    from sacred.utils import apply_backspaces_and_linefeeds

import yaml
from bson.errors import InvalidDocument
from pymongo import WriteConcern
from pymongo.errors import PyMongoError

from ldreg import config
from ldreg.errors import DatabaseError, LdregError

SETTINGS.CAPTURE_MODE = "sys"  # "fd" breaks under pytest's capture and loses tqdm's carriage returns
SETTINGS.DISCOVER_SOURCES = "none"  # ldreg names its sources itself: every loaded module of the packages that ran
SETTINGS.DISCOVER_DEPENDENCIES = "none"  # ldreg names them itself: imported_distributions()

RUNS_COLLECTION = "runs"  # Sacred's default, what Omniboard reads
HEARTBEAT_ENV = "LDREG_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0  # Sacred's default
DB_TIMEOUT_S = 3.0  # Sacred's own client: one server selection, not pymongo's 30 s

log = logging.getLogger("ldreg.tracking")

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # sources are named relative to it: "ldreg/runner.py"
CONFIG_ARTIFACT = "config.resolved.yaml"
SPEC_ARTIFACTS = "spec/"  # spec/<file as written>, one per file of the spec and its includes
YAML_TYPE = "text/yaml"
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def terminal_text(text: str) -> str:
    """Sacred's captured-output filter: what a terminal would show (ANSI codes dropped, ``\\r`` and
    ``\\b`` applied). The last, unfinished line keeps a trailing ``\\r`` so the next chunk can overwrite it."""
    return apply_backspaces_and_linefeeds(_ANSI.sub("", text))


def readable_output(text: str) -> str:
    """The captured output as stored: whole lines, no trailing spaces, no control characters, and no
    blank lines left behind by a cleared progress bar (a line of spaces)."""
    lines = []
    for raw in terminal_text(text).split("\n"):
        line = "".join(ch for ch in raw if ch == "\t" or ch >= " ").rstrip()
        if line or not raw:
            lines.append(line)
    return "\n".join(lines)


def loaded_sources(packages: Iterable[str]) -> list[Path]:
    """The .py files of every loaded module in ``packages`` (and their subpackages), sorted: the code that ran."""
    roots = tuple(dict.fromkeys(p for p in packages if p))
    files = set()
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == r or name.startswith(r + ".") for r in roots):
            continue
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py") and os.path.isfile(path):
            files.add(Path(path).resolve())
    return sorted(files)


def source_name(path: Path) -> str:
    """How a source is named in the record: relative to the folder holding ldreg, when it is under it."""
    try:
        return path.relative_to(SOURCE_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def imported_distributions() -> dict[str, str]:
    """Distribution -> version of every imported top-level package (torch, transformers, pymongo, ...).

    Sacred's own discovery maps modules to distributions through ``top_level.txt``, which many
    wheels no longer ship, and so misses them; ``packages_distributions`` reads the RECORD files too.
    """
    from importlib.metadata import PackageNotFoundError, version

    by_module = _distributions_by_module()
    found: dict[str, str] = {}
    for name in sorted(n for n in list(sys.modules) if "." not in n and not n.startswith("_")):
        for dist in by_module.get(name, ()):
            try:
                found.setdefault(dist, version(dist))
            except PackageNotFoundError:
                continue
    return found


@lru_cache(maxsize=1)
def _distributions_by_module() -> Mapping[str, list[str]]:
    """Top-level module -> distributions; read once a process (about a second with many installed)."""
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def heartbeat_s() -> float:
    """Seconds between heartbeats (LDREG_HEARTBEAT_S); a run silent for 3 of them shows as DEAD."""
    raw = os.environ.get(HEARTBEAT_ENV)
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0.05 <= value <= 3600):
        raise LdregError(f"{HEARTBEAT_ENV}={raw[:40]!r}: give seconds between 0.05 and 3600, e.g. 10")
    return value


class RunNotSaved(DatabaseError):
    """The run ended, but the database did not take its final record: it waits in a spool file."""


class DurableMongoObserver(MongoObserver):
    """Sacred's MongoObserver, made durable and bounded.

    - Metrics: Sacred hands the points logged since the last heartbeat to ``log_metrics`` once and
      drops them if the write fails. Here they wait in memory per metric and go out with the next
      heartbeat or the final event, journaled, skipping steps already stored (exactly once).
    - The final save: one attempt with a short timeout (Sacred retries for minutes); if the
      database does not answer, the run document is saved in ``failure_dir`` as JSON, next to any
      metric points still pending, for `ldreg db flush`. ``spooled`` lists what was saved there.
    - A run whose observations are still spooled is not saved as COMPLETED: its final document
      waits in the spool until `ldreg db flush` has stored those observations.
    - Run ids come from ldreg's counter (never reused after a delete), not from max(_id) + 1.
    - Sources: every loaded module of ``source_packages`` (ldreg and each plugin's package), at the
      start and again at the end (modules imported lazily during the run), each file stored once.
    - Artifacts: one the database did not take is kept in memory and tried again at the end.
    - Captured output is stored readable (``readable_output``); a resumed run (``overwrite``) keeps
      its start time, artifacts and resources, and its new output is appended to the old.
    """

    source_packages: Sequence[str] = ("ldreg",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, dict[str, list]] = {}
        self.spooled: list[Path] = []
        self._hold_final = False
        self._finished = False
        self._lock = threading.RLock()  # the heartbeat thread and the main thread both write
        self._unsaved_artifacts: list[tuple[str, bytes, Any, str | None]] = []
        self.earlier: dict[str, Any] = dict(self.overwrite) if self.overwrite else {}  # the run being resumed
        journaled = WriteConcern(j=True)
        self.runs = self.runs.with_options(write_concern=journaled)
        if self.metrics is not None:
            self.metrics = self.metrics.with_options(write_concern=journaled)

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        if self.overwrite is None and _id is None:
            from ldreg.store.runs import next_run_id

            _id = next_run_id(self.runs.database)
        if self.earlier.get("start_time"):
            start_time = self.earlier["start_time"]  # a resumed run started when it first started
        run_id = super().started_event(ex_info, command, host_info, start_time, config, meta_info, _id)
        if self.earlier:
            self.run_entry["artifacts"] = list(self.earlier.get("artifacts") or [])
            self.run_entry["resources"] = list(self.earlier.get("resources") or [])
            self.save()
        return run_id

    # -- sources and artifacts ------------------------------------------------------------------

    def save_sources(self, ex_info):
        """Sacred's sources, chosen by ldreg: the loaded modules of ``source_packages``, each file stored
        in GridFS once (found again by its checksum; pymongo 4 no longer keeps GridFS md5s)."""
        recorded = {name for name, _ in (self.run_entry or {}).get("experiment", {}).get("sources") or []}
        found = []
        for path in loaded_sources(self.source_packages):
            name = source_name(path)
            if name in recorded:
                continue
            md5 = _md5(path)
            stored = self.fs.find_one({"filename": name, "metadata.md5": md5})
            if stored is None:
                with path.open("rb") as f:
                    file_id = self.fs.put(f, filename=name, metadata={"md5": md5}, content_type="text/x-python")
            else:
                file_id = stored._id
            found.append([name, file_id])
        return found

    def _record_late_sources(self) -> None:
        """Add the modules first imported during the run (probes, influence, checkpoints, ...)."""
        if "experiment" not in self.run_entry:  # no started event: nothing recorded to add to
            return
        try:
            late = self.save_sources({})
        except (PyMongoError, OSError) as exc:
            log.warning("sources imported during run %s not saved (%s)", self.run_entry["_id"], type(exc).__name__)
            return
        if late:
            sources = self.run_entry["experiment"].setdefault("sources", [])
            sources.extend(late)
            sources.sort(key=lambda item: item[0])

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        """Store an artifact; if the database does not answer, keep it and try again at the end
        (Sacred would otherwise drop this observer, and with it the run's final record)."""
        with self._lock:
            try:
                super().artifact_event(name, filename, metadata=metadata, content_type=content_type)
            except PyMongoError as exc:
                log.warning("artifact %s not saved yet: the database did not answer (%s)", name, type(exc).__name__)
                self._unsaved_artifacts.append((name, Path(filename).read_bytes(), metadata, content_type))
            except OSError as exc:  # the file went away: nothing to keep, but the run goes on
                log.warning("artifact %s not saved: %s could not be read (%s)", name, filename, exc.strerror)

    def resource_event(self, filename):
        """Sacred's resource record (path and md5); a database that does not answer costs the entry, not the run."""
        with self._lock:
            try:
                super().resource_event(filename)
            except (PyMongoError, OSError) as exc:
                log.warning("resource %s not recorded (%s)", filename, type(exc).__name__)

    def _retry_artifacts(self) -> None:
        while self._unsaved_artifacts:
            name, data, metadata, content_type = self._unsaved_artifacts[0]
            try:
                file_id = self.fs.put(data, filename=f"artifact://{self.runs.name}/{self.run_entry['_id']}/{name}",
                                      metadata=metadata, content_type=content_type)
            except PyMongoError:
                names = ", ".join(a[0] for a in self._unsaved_artifacts)
                log.warning("run %s: artifacts not saved, the database did not answer: %s", self.run_entry["_id"], names)
                self.run_entry.setdefault("info", {})["artifacts_not_saved"] = [a[0] for a in self._unsaved_artifacts]
                return
            self.run_entry.setdefault("artifacts", []).append({"name": name, "file_id": file_id})
            self._unsaved_artifacts.pop(0)

    # -- metrics -----------------------------------------------------------------------------

    def log_metrics(self, metrics_by_name, info):
        from ldreg.store.metrics import merge_series

        with self._lock:
            merge_series(self.pending, metrics_by_name)
            self._flush_metrics(info)

    def write_metrics_now(self, metrics_by_name, info) -> dict[str, dict[str, list]]:
        """Write now (before a checkpoint); returns a copy of what is still pending (the database is down)."""
        with self._lock:
            self.log_metrics(metrics_by_name, info)
            return {name: {k: list(v) for k, v in series.items()} for name, series in self.pending.items()}

    def _flush_metrics(self, info) -> bool:
        from ldreg.store.metrics import new_points

        for name in list(self.pending):
            try:
                fresh = new_points(self.metrics, self.run_entry["_id"], name, self.pending[name])
                if fresh["steps"]:
                    super().log_metrics({name: fresh}, info)
            except PyMongoError as exc:
                log.warning("metrics kept for later: the database did not answer (%s)", type(exc).__name__)
                return False
            del self.pending[name]
        return True

    def heartbeat_event(self, info, captured_out, beat_time, result):
        with self._lock:
            if self._finished:  # a late beat (Sacred joins its thread for 2 s only) must not save over the end
                return
            try:
                super().heartbeat_event(info, self.output(captured_out), beat_time, result)
            except PyMongoError as exc:  # Sacred would mark this observer failed and stop beating
                log.warning("heartbeat not saved: the database did not answer (%s)", type(exc).__name__)

    def output(self, captured_out: str) -> str:
        """What the record keeps as captured output: this process's, readable, after a resumed run's earlier output."""
        now = readable_output(captured_out or "")
        earlier = (self.earlier.get("captured_out") or "").rstrip("\n")
        if not earlier:
            return now
        return f"{earlier}\n{now}" if now else earlier

    # -- the end -----------------------------------------------------------------------------

    def _final(self, event: str, **kwargs):
        from ldreg.store.metrics import merge_series
        from ldreg.store.spool import read_json, write_json

        with self._lock:
            self._finished = True
            self._flush_metrics(self.run_entry.get("info", {}))
            self._record_late_sources()
            self._retry_artifacts()
            if self.pending and self.failure_dir:
                path = Path(self.failure_dir) / f"metrics-run-{self.run_entry['_id']}.json"
                saved: dict = read_json(path) if path.exists() else {}
                merge_series(saved, self.pending)
                write_json(path, saved)
                self.spooled.append(path)
                log.warning("the database is down: metrics of run %s saved in %s", self.run_entry["_id"], path)
            return getattr(super(), event)(**kwargs)

    def final_save(self, attempts):
        """One bounded attempt; else the run document goes to the spool for `ldreg db flush`."""
        if not self._hold_final:
            for _ in range(2):  # the second try only after making the document BSON-safe
                try:
                    self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
                    return
                except (PyMongoError, InvalidDocument) as exc:
                    if not isinstance(exc, InvalidDocument):
                        log.warning("final save of run %s failed (%s)", self.run_entry["_id"], type(exc).__name__)
                        break
                    self.run_entry = force_bson_encodeable(self.run_entry)
        if not self.failure_dir:
            return
        from ldreg.store.spool import write_json

        path = Path(self.failure_dir) / f"run-{self.run_entry['_id']}.json"
        try:
            write_json(path, self.run_entry)
        except (TypeError, ValueError):
            write_json(path, force_bson_encodeable(self.run_entry))
        self.spooled.append(path)

    def completed_event(self, stop_time, result):
        self._hold_final = bool(isinstance(result, dict) and result.get("observations_spooled"))
        return self._final("completed_event", stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        return self._final("interrupted_event", interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        return self._final("failed_event", fail_time=fail_time, fail_trace=fail_trace)


def add_dependency(ex: Experiment, distribution: str, version: str) -> None:
    """A dependency Sacred records as ``name==version`` (``<unknown>`` when not a PEP 440 version)."""
    if not distribution:
        return
    try:
        ex.add_package_dependency(distribution, version)
    except ValueError:
        ex.dependencies.add(PackageDependency(distribution, None))


def add_record_artifacts(run, run_config: dict[str, Any], spec_files: Sequence[str | Path]) -> None:
    """The spec files as written (``spec/<path relative to the first>``) and the resolved config."""
    files = [Path(f).resolve() for f in spec_files]
    for path in files:
        relative = os.path.relpath(path, files[0].parent)
        run.add_artifact(str(path), name=SPEC_ARTIFACTS + Path(relative).as_posix(), content_type=YAML_TYPE)
    with tempfile.TemporaryDirectory(prefix="ldreg-config-") as tmp:
        path = Path(tmp) / CONFIG_ARTIFACT
        path.write_text(resolved_yaml(run_config), encoding="utf-8")
        run.add_artifact(str(path), name=CONFIG_ARTIFACT, content_type=YAML_TYPE)


def resolved_yaml(run_config: dict[str, Any]) -> str:
    """The config as YAML (keys in the spec's order); values YAML cannot write become strings."""
    try:
        return yaml.safe_dump(run_config, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return yaml.safe_dump(json.loads(json.dumps(run_config, default=str)), sort_keys=False, allow_unicode=True)


def _summary(result: Any) -> str:
    if not isinstance(result, dict):
        return "no result" if result is None else type(result).__name__
    plain = [f"{k} {v}" for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return ", ".join(plain) or "finished"


@dataclass
class RunContext:
    """What the experiment body gets: the Sacred run id and a metric logger."""

    run_id: int
    log_scalar: Callable[[str, float, int], None]
    add_artifact: Callable[[str, str], None]
    info: dict[str, Any]
    # Write the metrics logged so far now (before a checkpoint); returns what is still unwritten.
    flush_metrics: Callable[[], dict[str, dict[str, list]]] = field(default=lambda: {})


Body = Callable[[RunContext], dict[str, Any]]


def run_tracked(name: str, run_config: dict[str, Any], body: Body, *, url: str, tags: list[str] = (),
                db_name: str | None = None, spec_path: str | Path | None = None, comment: str = "",
                overwrite: int | None = None, spec_files: Sequence[str | Path] = (),
                source_packages: Sequence[str] = ("ldreg",),
                dependencies: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``body`` as a Sacred experiment named ``name`` observed into MongoDB; return (run id, result).

    ``run_config`` is what Sacred records as the run's config (an experiment spec as a dict, or a
    simulation's settings). ``overwrite``: continue the run with this id (``--resume``).
    Sacred marks the run FAILED on an exception and INTERRUPTED on Ctrl-C; ``body`` is
    responsible for flushing what it computed before it re-raises (the runner's sink does).
    If the database does not answer when the run ends, this raises RunNotSaved naming the spool
    files and `ldreg db flush`, after a bounded wait (DB_TIMEOUT_S per write, not minutes).

    The record: ``spec_files`` (the spec and its includes, first the file given) are stored as
    artifacts ``spec/<name>`` byte for byte, and ``run_config`` as ``config.resolved.yaml``;
    ``spec_path`` is also a resource (its path and md5). The sources are the loaded modules of
    ``source_packages``; the dependencies are the imported distributions (``imported_distributions``)
    and ``dependencies`` (distribution -> version, e.g. the plugins'). A resumed run keeps the
    artifacts, start time, info and output it has.
    """
    from ldreg.store.spool import sacred_dir, spool_dir

    db_name = db_name or config.db_name()
    beat = heartbeat_s()
    SETTINGS.DEFAULT_BEAT_INTERVAL = beat  # read by each new Sacred Run
    ms = int(DB_TIMEOUT_S * 1000)
    ex = Experiment(name, save_git_info=False)
    ex.captured_out_filter = terminal_text
    ex.add_config(run_config)
    for dist, version in sorted({**imported_distributions(), **(dependencies or {})}.items()):
        add_dependency(ex, dist, version)
    observer = DurableMongoObserver(url=url, db_name=db_name, overwrite=overwrite,
                                    failure_dir=str(sacred_dir(spool_dir(db_name))),
                                    serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=60_000)
    observer.source_packages = tuple(dict.fromkeys(["ldreg", *source_packages]))
    ex.observers.append(observer)

    @ex.main
    def main(_run):
        def flush_metrics():
            return observer.write_metrics_now(linearize_metrics(_run._metrics.get_last_metrics()), _run.info)

        ctx = RunContext(run_id=_run._id, log_scalar=lambda n, v, s: _run.log_scalar(n, v, s),
                         add_artifact=lambda path, name: _run.add_artifact(path, name=name), info=_run.info,
                         flush_metrics=flush_metrics)
        _run.info.update(observer.earlier.get("info") or {})  # a resumed run keeps what it recorded
        _run.info["tags"] = list(tags)
        print(f"ldreg run {_run._id} ({name}): {'resumed' if overwrite is not None else 'started'} "
              f"at {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC", flush=True)
        if spec_path:
            _run.add_resource(str(spec_path))
        if overwrite is None:
            add_record_artifacts(_run, run_config, spec_files)
        try:
            result = body(ctx)
        except BaseException as exc:
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}: {exc}"
            # on a line of its own: a progress bar left open by the exception holds the current line
            print(f"\nldreg run {_run._id} ({name}): {what}"[:2000], flush=True)
            _run._get_captured_output()  # Sacred closes the capture before a failed run's last heartbeat reads it
            raise
        print(f"ldreg run {_run._id} ({name}): done: {_summary(result)}", flush=True)
        return result

    try:
        run = ex.run(meta_info={"comment": comment, "tags": list(tags), "heartbeat_s": beat, "pid": os.getpid()},
                     options={"--name": name, "--loglevel": "WARNING"})
    except BaseException:
        if observer.spooled:
            log.warning("the database did not answer at the end: the run's final record waits in %s; "
                        "store it with `ldreg db flush`", ", ".join(map(str, dict.fromkeys(observer.spooled))))
        raise
    result = run.result if isinstance(run.result, dict) else {}
    if observer.spooled or result.get("observations_spooled"):
        waiting = [f"{result['observations_spooled']} observation(s) in {result.get('spool')}"] \
            if result.get("observations_spooled") else []
        waiting += [str(p) for p in dict.fromkeys(observer.spooled)]
        raise RunNotSaved(
            f"run {run._id} finished training, but the database did not answer within the bound "
            f"(~{DB_TIMEOUT_S:g} s a write): it is not recorded as finished. Waiting on disk: "
            f"{'; '.join(waiting)}. Store them with `ldreg db flush` once `ldreg db status` answers")
    return run._id, run.result

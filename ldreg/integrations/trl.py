"""ldreg's probes inside TRL's trainers and the HF Trainer: one callback, one line to add.

    from ldreg.integrations.trl import LdregCallback

    trainer = DPOTrainer(..., callbacks=[LdregCallback(train_dataset, name="my-dpo")])

TRL logs batch means; the paper's questions (do y+ and y- both fall? what happens to a rephrase,
a random sentence?) need per-example log-probs of fixed responses at fixed points of training.
The callback builds a probing set exactly as an ldreg run does (any registered response type, or
the authors' files), probes the trainer's own model with ldreg's probe engine (LoRA adapters
active, on the main process only), and records everything as an ordinary ldreg Sacred run, so
``ldreg runs``, ``ldreg query`` and the shipped figures read it like any other run.

Between probes the callback does integer arithmetic only. An SFT -> DPO chain run as two TRL
trainers is one ldreg run with two stages: give ``stages=["sft", "dpo"]`` and pass the same
callback to both trainers.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import time
from typing import Any, Iterable, Mapping, Sequence

from transformers import TrainerCallback

from ldreg.data.tokenize import TokenLimits, TruncationReport
from ldreg.errors import SpecError
from ldreg.observations import Observation
from ldreg.responses import PreferenceExample
from ldreg.spec import ExperimentSpec, ProbingSpec
from ldreg.train import Clock
from ldreg.validation import from_dict, to_dict

DEFAULT_PROBING = {"every": 64, "response_types": ["chosen", "rejected", "chosen_permuted"],
                   "sets": [{"name": "train", "source": "train", "n": 16}]}
LOSS_OF_ARGS = {"DPOConfig": "dpo", "SFTConfig": "sft", "KTOConfig": "kto", "ORPOConfig": "orpo",
                "CPOConfig": "cpo", "TrainingArguments": "sft"}


def preference_examples(rows: Iterable[Mapping[str, Any]] | None, where: str) -> list[PreferenceExample]:
    """Rows with text ``prompt``, ``chosen`` and ``rejected`` (TRL's preference format) as examples, ids
    their row numbers; ``chosen`` may be called ``completion`` (TRL's prompt-completion format)."""
    if rows is None:
        return []
    out = []
    for i, row in enumerate(rows):
        chosen = row.get("chosen", row.get("completion"))
        missing = [k for k, v in (("prompt", row.get("prompt")), ("chosen", chosen)) if v is None]
        if missing:
            raise SpecError(f"{where} row {i}: no {' or '.join(missing)} field; give rows with prompt, chosen "
                            f"and rejected text (TRL's preference format), e.g. the trainer's train_dataset")
        texts = (row["prompt"], chosen, row.get("rejected", ""))
        if not all(isinstance(t, str) for t in texts):
            raise SpecError(f"{where} row {i}: prompt/chosen/rejected must be text; conversational rows (lists of "
                            f"messages) are not supported yet: apply the chat template to the rows first")
        out.append(PreferenceExample(i, *texts))
    return out


def _loss_of(args) -> str:
    return LOSS_OF_ARGS.get(type(args).__name__, type(args).__name__.removesuffix("Config").lower())


def _plain(value: Any) -> Any:
    """A value Sacred can store: JSON types as they are, anything else as its text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def adapter_info(model) -> dict[str, Any] | None:
    """The PEFT adapters of ``model`` (None without any): what probes see is the base plus these."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    active = getattr(model, "active_adapters", None)
    return {"active": list(active() if callable(active) else active or []),
            "config": {name: _plain(c.to_dict()) for name, c in configs.items()}}


@contextlib.contextmanager
def unmixed(model):
    """The model's own forward for the probe pass, without accelerate's mixed-precision wrapper.

    Under ``bf16``/``fp16`` accelerate replaces ``model.forward`` with an autocast version (TRL's
    configs default to ``bf16=True``); probes read the trained weights in their own precision, as
    ``probe`` does on a saved checkpoint, so their values do not depend on the trainer's autocast.
    """
    attrs = model.__dict__
    if "_original_forward" not in attrs or "forward" not in attrs:
        yield
        return
    wrapped = attrs["forward"]
    attrs["forward"] = attrs["_original_forward"]
    try:
        yield
    finally:
        attrs["forward"] = wrapped


class LdregCallback(TrainerCallback):
    """Probe the trainer's model on ldreg's schedule and record an ldreg run (see the module docstring).

    ``examples``: the preference rows the ``source: train`` probing sets sample from (usually the
    trainer's ``train_dataset``); ``test_examples`` for ``source: test``. ``probing``: the ``probing:``
    section of an ldreg spec (``every`` counts examples seen; sets from ``train``, ``test``, a saved
    probing set or ``authors:helpful-base/train``; ``influence`` and ``entk`` on their schedules).
    ``stages``: the loss of each trainer this callback will see, in order (default: one stage, named
    after the trainer's config class). ``max_length``/``max_prompt_length``: tokens, as in ``data:``.
    """

    def __init__(self, examples: Iterable[Mapping[str, Any]] | None = None, *, probing: Mapping | None = None,
                 test_examples: Iterable[Mapping[str, Any]] | None = None, name: str = "trl", seed: int = 0,
                 stages: Sequence[str] | None = None, tags: Sequence[str] = (), max_length: int = 512,
                 max_prompt_length: int = 256):
        self.probing: ProbingSpec = from_dict(ProbingSpec, dict(probing or DEFAULT_PROBING), "probing")
        for section in ("generation", "ches"):  # newer probes the callback does not run yet: never silently
            if getattr(self.probing, section, None) is not None:
                raise SpecError(f"probing.{section}: not run by the TRL callback yet; remove it (an ldreg run "
                                f"records it)")
        self.spec = ExperimentSpec(name=name, seed=seed, tags=list(tags), probing=self.probing)
        self.train_examples = preference_examples(examples, "examples")
        self.test_examples = preference_examples(test_examples, "test_examples")
        for s in self.probing.sets:
            pool = {"train": self.train_examples, "test": self.test_examples}.get(s.source)
            if pool is not None and not pool:
                raise SpecError(f"probing.sets[{s.name}]: source {s.source} needs rows: pass "
                                f"{'examples' if s.source == 'train' else 'test_examples'}=<your dataset>")
        self.stages = list(stages) if stages else None
        self.limits = TokenLimits(max_length=max_length, max_prompt_length=max_prompt_length)
        self.run = None  # the OpenRun, on the main process once training has begun
        self.sink = None
        self.probe_sets: dict = {}
        self.pad_id = 0
        self.clock = Clock()
        self._offset = (0, 0)  # steps and examples seen before the current trainer (earlier stages)
        self._stage_count = 0
        self._probed_at: int | None = None  # examples seen at the previous probe pass
        self._last_probe = (-1, -1)  # (stage_index, step) of the previous pass: never probe a point twice
        self.passes, self.probe_seconds = 0, 0.0
        self.result: dict[str, Any] | None = None
        self._abandoned = False

    # -- the trainer's events ---------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        index = self._stage_count
        self._stage_count += 1
        stages = self.stages or [_loss_of(args)]
        if index >= len(stages):
            raise SpecError(f"stages: this callback was declared for {len(stages)} trainer(s) ({', '.join(stages)}) "
                            f"and is now in trainer {index + 1}; give stages=[...] naming each trainer's loss")
        if self.run is None:
            self._start(args, model, processing_class, stages)
        self.context.info.setdefault("trl_stages", []).append(
            {"stage_index": index, "args_class": type(args).__name__, "args": _plain(args.to_dict())})
        self.clock.stage, self.clock.stage_index = f"{index}-{stages[index]}", index
        self._offset = (self.clock.step, self.clock.examples_seen)
        self._sync(args, state)
        self._probe(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.run is None:
            return
        before = self.clock.examples_seen
        self._sync(args, state)
        if self.clock.examples_seen // self.probing.every > before // self.probing.every:
            self._probe(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not logs:
            return
        step = self._offset[0] + state.global_step
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.context.log_scalar(key, float(value), step)
        self.context.log_scalar("stage_index", float(self.clock.stage_index), step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.run is None:
            return
        self._sync(args, state)
        self._probe(model)  # the end of the stage, unless just probed
        if self._stage_count == len(self.stages or [_loss_of(args)]):
            self.finish()

    # -- the run --------------------------------------------------------------------------------

    @property
    def context(self):
        return self.run.context

    def _start(self, args, model, tokenizer, stages: list[str]) -> None:
        from ldreg import runner
        from ldreg.integrations.open_run import OpenRun
        from ldreg.registry import get_plugins
        from ldreg.store.connection import mongo_url
        from ldreg.store.sink import StoreSink

        if tokenizer is None or not hasattr(tokenizer, "pad_token_id"):
            raise SpecError("the trainer has no tokenizer (processing_class): pass processing_class=<tokenizer>")
        plugins = get_plugins()
        model_path = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
        report = TruncationReport()
        sets = runner.probing_sets(self.spec, self.train_examples, self.test_examples, model_path, tokenizer,
                                   model, plugins)
        self.probe_sets = {s.name: runner.encode_set(s, tokenizer, self.limits, report) for s in sets}
        report.warn()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        config = {
            "name": self.spec.name, "seed": self.spec.seed, "tags": list(self.spec.tags), "source": "trl",
            "model": {"base": model_path, "adapter": adapter_info(model)},
            "data": {"max_length": self.limits.max_length, "max_prompt_length": self.limits.max_prompt_length},
            "probing": to_dict(self.probing),
            "stages": [{"name": f"{i}-{loss}", "loss": loss} for i, loss in enumerate(stages)],
        }
        first = config["stages"][0]
        first.update(lr=args.learning_rate, epochs=args.num_train_epochs, batch_size=self._batch(args),
                     params={k: _plain(getattr(args, k)) for k in ("beta", "loss_type") if hasattr(args, k)})
        self.run = OpenRun(self.spec.name, config, url=mongo_url(), tags=self.spec.tags,
                           **runner.plugin_record(plugins))
        self.context.info["truncation"] = report.as_dict()
        self.context.info["plugins"] = plugins.versions()
        self.context.info["response_labels"] = {t: getattr(plugins.responses.get(t), "label", "") or t
                                                for t in self.probing.all_types()}
        self.sink = runner.CountingSink(StoreSink(self.run.run_id))
        self._started = time.perf_counter()
        atexit.register(self.abandon)

    @staticmethod
    def _batch(args) -> int:
        """Examples per optimiser step across every process (what ``examples_seen`` counts)."""
        return int(args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1))

    def _sync(self, args, state) -> None:
        steps = state.global_step
        self.clock.step = self._offset[0] + steps
        self.clock.examples_seen = self._offset[1] + steps * self._batch(args)

    def _probe(self, model) -> None:
        point = (self.clock.stage_index, self.clock.step)
        if point == self._last_probe:
            return
        start = time.perf_counter()
        with unmixed(model):
            self._probe_pass(model)
        self._probed_at, self._last_probe = self.clock.examples_seen, point
        self.passes += 1
        self.probe_seconds += time.perf_counter() - start

    def _probe_pass(self, model) -> None:
        from ldreg.dynamics.probes import probe, probe_observations, prompt_sharing

        c = self.clock
        for ps in self.probe_sets.values():
            result = probe(model, ps.pairs_by_type, ps.example_ids, pad_id=self.pad_id,
                           max_tokens_per_batch=self.probing.max_tokens_per_batch,
                           share_prompts=self.probing.share_prompts)
            shared = sum(prompt_sharing(ps.pairs_by_type)) if self.probing.share_prompts else 0
            for obs in probe_observations(result, ps.example_ids, step=c.step, examples_seen=c.examples_seen,
                                          stage=c.stage, stage_index=c.stage_index, probe_set=ps.name,
                                          meta={"prompts_shared": shared, "source": "trl"}):
                self.sink.emit(obs)
        for obs in self._extras(model):
            self.sink.emit(obs)

    def _extras(self, model) -> list[Observation]:
        """Influence and eNTK on their own schedules, as in an ldreg run (``runner.extras_due``)."""
        from ldreg.runner import extras_due

        first = next(iter(self.probe_sets.values()))
        c = self.clock
        where = dict(step=c.step, examples_seen=c.examples_seen, stage=c.stage, stage_index=c.stage_index,
                     probe_set=first.name)
        out: list[Observation] = []
        spec = self.probing
        if spec.influence and extras_due(spec.influence.every, c, self._probed_at):
            from ldreg.dynamics.influence import influence, influence_observations

            n = spec.influence.n
            subset = {t: pairs[:n] for t, pairs in first.pairs_by_type.items()}
            result = influence(model, subset, first.example_ids[:n], updates=spec.influence.update_types,
                               observes=list(subset), lr=spec.influence.lr, mode=spec.influence.mode,
                               pad_id=self.pad_id, max_tokens_per_batch=spec.max_tokens_per_batch)
            out += influence_observations(result, first.example_ids[:n], **where)
        if spec.entk and extras_due(spec.entk.every, c, self._probed_at):
            from ldreg.dynamics.entk import entk_observation, sequence_entk

            n, rtype = spec.entk.n, spec.entk.response_type
            result = sequence_entk(model, first.pairs_by_type[rtype][:n], mode=spec.entk.mode,
                                   max_params=spec.entk.max_params, projection_dim=spec.entk.projection_dim,
                                   seed=self.spec.seed)
            out.append(entk_observation(result, first.example_ids[:n], response_type=rtype, **where))
        return out

    def finish(self) -> dict[str, Any]:
        """Store every observation, then record the run COMPLETED (called after the last trainer)."""
        from ldreg.runner import ObservationsNotStored, not_stored_message

        atexit.unregister(self.abandon)
        counts = self.sink.close()
        result = {"steps": self.clock.step, "examples_seen": self.clock.examples_seen,
                  "observations": self.sink.count, "probe_passes": self.passes,
                  "probe_seconds": round(self.probe_seconds, 3),
                  "seconds": round(time.perf_counter() - self._started, 3)}
        inner = self.sink.inner
        if counts is not None and (counts.lost or counts.rejected):
            error = ObservationsNotStored(not_stored_message(self.run.run_id, self.sink.count, counts, inner, None))
            self.run.fail(error)
            raise error
        if counts is not None and counts.left:  # the database is down: `ldreg db flush` finishes the run
            result.update(observations_spooled=counts.left, spool=str(inner.spool.path))
        _, self.result = self.run.finish(result)
        return self.result

    def abandon(self, reason: str = "") -> None:
        """Training stopped before the last trainer ended (it raised, or was interrupted): store what was
        probed and record the run FAILED. Registered to run at exit; call it in your ``except`` to do it now."""
        if self.run is None or self.result is not None or self._abandoned:
            return
        self._abandoned = True
        atexit.unregister(self.abandon)
        self.sink.close()
        self.run.fail(RuntimeError(reason or "training stopped before the last trainer's on_train_end; the "
                                   f"{self.sink.count} observations probed until then are stored"))

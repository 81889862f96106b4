"""Experiment specs: declarative YAML, validated before anything runs.

A spec names the model, the data, the probing sets, the stages (each a loss with its
hyper-parameters), the probe schedule, the backend, the seed and tags. ``include:`` pulls in a
shared base; ``key=value`` overrides (Sacred's syntax, dotted keys, ``stages.1.lr=1e-5``) apply
on top. Every mistake gets one message naming the field and the fix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ldreg import yamlsafe
from ldreg.errors import SpecError, preview
from ldreg.validation import CHECK, from_dict, non_negative, positive, to_dict

if TYPE_CHECKING:
    from ldreg.registry import Plugins

MAX_INCLUDE_DEPTH = 16

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class TinyModelSpec:
    """A GPT-NeoX built from config with a BPE tokenizer trained on the data (``base: tiny``)."""

    hidden_size: int = field(default=64, metadata=positive())
    layers: int = field(default=2, metadata=positive())
    heads: int = field(default=4, metadata=positive())
    vocab_size: int = field(default=512, metadata={CHECK: (lambda v: v >= 300, "must be >= 300 (bytes + merges)")})
    architecture: Literal["gpt_neox", "llama"] = "gpt_neox"


@dataclass
class ModelSpec:
    """``base``: a hub id, a local directory, ``tiny`` (built here), or ``pretrained:NAME`` (cached here).

    The policy's weights train in fp32; ``dtype`` is the autocast precision of its forward passes and
    of the probes, ``reference_dtype`` the frozen reference's weights; ``auto`` takes the backend's
    preferred dtype (bf16 on GPUs that run it, fp32 on CPUs).
    """

    base: str = "tiny"
    dtype: Dtype = "auto"
    reference_dtype: Dtype = "auto"
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec)


@dataclass
class DataSpec:
    """Preference data: a local file/directory or a hub id, read through ``datasets.load_dataset``,
    or ``generated:NAME``, a data set ldreg builds from real text (``ldreg.paper.fortune_prefs``)."""

    source: str = ""
    format: Literal["auto", "hh", "ultrafeedback", "jsonl", "unpaired"] = "auto"
    split: str = "train"
    data_dir: str | None = None
    limit: int | None = field(default=None, metadata=positive())
    test_fraction: float = field(default=0.1, metadata={CHECK: (lambda v: 0 <= v < 1, "must be in [0, 1)")})
    max_length: int = field(default=512, metadata=positive())
    max_prompt_length: int = field(default=256, metadata=positive())
    # Wrap each HH prompt in the tokenizer's chat template (instruct models); off: the HH text as is.
    chat_template: bool = False
    # Which examples are held out: a shuffle by this seed (None: the run's seed), so seeds replicate.
    split_seed: int | None = field(default=None, metadata=non_negative())

    def validate(self, where: str) -> None:
        if not self.source:
            raise SpecError(f"{where}.source: required: a JSON-lines file, a data directory or a hub id")
        if self.max_prompt_length >= self.max_length:
            raise SpecError(f"{where}.max_prompt_length: must be below max_length ({self.max_length}), "
                            f"got {self.max_prompt_length}")


@dataclass
class ProbeSetSpec:
    """Where a probing set's prompts come from: the training data, the held-out test split, or a file."""

    name: str
    source: str = "train"
    n: int = field(default=16, metadata=positive())


@dataclass
class InfluenceSpec:
    """The one-step influence matrix (update type x observe type) on a small subset."""

    every: int = field(default=0, metadata=non_negative("must be >= 0 (0: only before training)"))
    n: int = field(default=4, metadata=positive())
    lr: float = field(default=1e-3, metadata=positive())
    update_types: list[str] = field(default_factory=lambda: ["chosen", "rejected"])
    # batch: one SGD step on all n examples together; per_example: one step per example, observed
    # on that example only (update and observation share a prompt). Recorded in each observation.
    mode: Literal["batch", "per_example"] = "batch"
    # Also store the first-order prediction eta K G beside each measured change, and the residual
    # (kind "prediction"; ldreg.dynamics.prediction). K is taken as probing.entk says (mode,
    # max_params, projection_dim), or exact up to 1M parameters when probing.entk is not set.
    predict: bool = False


@dataclass
class GenerationSpec:
    """Degeneration probes (ldreg.dynamics.degeneration): continue the first ``prompts`` prompts of
    the first probing set, greedily and/or ``samples`` times by seeded sampling, every ``every``
    examples seen (0: only before training; always before the first update), and store each text
    with its repeated-4-gram rate, distinct-1/2, mean token entropy and length."""

    every: int = field(default=0, metadata=non_negative("must be >= 0 (0: only before training)"))
    prompts: int = field(default=4, metadata=positive())
    max_new_tokens: int = field(default=32, metadata=positive())
    greedy: bool = True
    samples: int = field(default=1, metadata=non_negative("must be >= 0 (sampled continuations per prompt)"))
    seed: int | None = field(default=None, metadata=non_negative("must be >= 0 (null: the run's seed)"))
    temperature: float = field(default=1.0, metadata=positive())

    def validate(self, where: str) -> None:
        if not self.greedy and not self.samples:
            raise SpecError(f"{where}: generates nothing; set greedy: true or samples: 1 or more")


@dataclass
class EntkSpec:
    """The exact eNTK Gram between probe examples (small models) or its last-layer form.

    ``mode``: ``full`` differentiates every trainable parameter, ``last_layer`` only the output
    layer, ``auto`` takes full up to ``max_params`` trainable parameters. ``projection_dim`` maps the
    gradients through a random Gaussian projection seeded by the run's seed (the Gram is kept in
    expectation; memory n x projection_dim instead of n x parameters). Each observation records
    the mode used, e.g. ``full+projection``.
    """

    every: int = field(default=0, metadata=non_negative("must be >= 0 (0: only before training)"))
    n: int = field(default=8, metadata=positive())
    response_type: str = "chosen"
    mode: Literal["auto", "full", "last_layer"] = "auto"
    max_params: int = field(default=1_000_000, metadata=positive())
    projection_dim: int | None = field(default=None, metadata=positive("must be > 0 (null: no projection)"))


@dataclass
class ChesSpec:
    """CHES of each preference pair (Razin et al.; ldreg.dynamics.ches) on the first probing set:
    at the start of every stage, and every ``every`` examples seen if > 0."""

    every: int = field(default=0, metadata=non_negative("must be >= 0 (0: only at each stage's start)"))
    n: int | None = field(default=None, metadata=positive("must be > 0 (null: every example of the set)"))
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass
class AlarmSpec:
    """Live warnings (ldreg.dynamics.displacement): each fires once per probing set, printed in the
    run's output and stored as an event on the run. Needs the chosen and rejected response types."""

    # the share of probe examples displaced (log pi(y+) fell while the margin rose) since the stage start
    displacement_share: float | None = field(
        default=None, metadata={CHECK: (lambda v: 0 < v <= 1, "must be a share in (0, 1], e.g. 0.5 (null: off)")})
    # y+ and y- both fell while the argmax confidence rose, on the probing set's means
    squeeze: bool = False


@dataclass
class AnswersSpec:
    """Answers the final model writes at the end of the run to the first ``n`` prompts (by id) of
    the ``source`` split, stored for pairwise judging (``ldreg winrate``; ldreg.judging.answers).
    ``seed`` is fixed by default (not the run's), so runs answer with the same random draws."""

    n: int = field(default=16, metadata=positive())
    source: Literal["test", "train"] = "test"
    max_new_tokens: int = field(default=48, metadata=positive())
    sampling: Literal["greedy", "sample"] = "greedy"
    temperature: float = field(default=1.0, metadata=positive())
    seed: int = field(default=0, metadata=non_negative())


@dataclass
class ProbingSpec:
    """What is observed, and how often (``every`` counts examples seen, as the authors do)."""

    every: int = field(default=100, metadata=positive("must be > 0 (examples seen between probes)"))
    response_types: list[str] = field(default_factory=lambda: ["chosen", "rejected", "chosen_permuted"])
    sets: list[ProbeSetSpec] = field(default_factory=lambda: [ProbeSetSpec("train")])
    max_tokens_per_batch: int = field(default=8192, metadata=positive())
    # Each prompt's forward once, its KV cache reused by every response type (same numbers, fewer
    # tokens); examples whose prompt differs between types are probed type by type. Each probe
    # observation records how many examples shared their prompt (meta.prompts_shared).
    share_prompts: bool = True
    # Settings for the response generators that build the probing sets (GenerationContext.options),
    # e.g. {rephrase_model: ./my-rephraser, rephrase_sampling: sample}; each key must be one a
    # probed type reads. Part of the probing-set cache key.
    options: dict[str, bool | int | float | str] = field(default_factory=dict)
    # Which n examples of a split a probing set takes: a sample by this seed (None: the run's seed).
    sample_seed: int | None = field(default=None, metadata=non_negative())
    influence: InfluenceSpec | None = None
    entk: EntkSpec | None = None
    generation: GenerationSpec | None = None
    ches: ChesSpec | None = None

    def all_types(self) -> list[str]:
        """Every response type a probing set must carry: observed, updated on, in the eNTK or in CHES."""
        extra = (self.influence.update_types if self.influence else []) + ([self.entk.response_type] if self.entk else [])
        extra += [self.ches.chosen, self.ches.rejected] if self.ches else []
        return list(dict.fromkeys([*self.response_types, *extra]))


@dataclass
class StageSpec:
    """One finetuning stage: a loss, its hyper-parameters, and its optimiser.

    ``reference``: ``stage_start`` freezes the policy as the stage begins (the authors' choice);
    a hub id or a local path loads that model as the reference instead.
    """

    loss: str
    name: str | None = None
    epochs: float = field(default=1.0, metadata=positive())
    lr: float = field(default=5e-7, metadata=positive())
    optimizer: Literal["rmsprop", "adamw", "sgd"] = "rmsprop"
    batch_size: int = field(default=4, metadata=positive())
    warmup_steps: int = field(default=0, metadata=non_negative())
    max_grad_norm: float | None = field(default=10.0, metadata=positive())
    params: dict[str, Any] = field(default_factory=dict)  # typed by the loss: LossDefinition.check_params
    reference: str = "stage_start"


@dataclass
class ExperimentSpec:
    name: str = "experiment"
    seed: int = field(default=0, metadata={CHECK: (lambda v: 0 <= v < 2**32, "must be in [0, 2**32)")})
    backend: str = "auto"
    tags: list[str] = field(default_factory=list)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    probing: ProbingSpec = field(default_factory=ProbingSpec)
    stages: list[StageSpec] = field(default_factory=list)
    checkpoint_every: int = field(default=50, metadata=non_negative("must be >= 0 (optimiser steps; 0: never)"))
    alarms: AlarmSpec | None = None
    answers: AnswersSpec | None = None  # answers for win rates, written at the end (ldreg.judging)

    def validate(self, where: str) -> None:
        if self.alarms is not None and not {"chosen", "rejected"} <= set(self.probing.response_types):
            raise SpecError("alarms: displacement alarms compare y+ with y-; add chosen and rejected to "
                            "probing.response_types")
        if not self.data.source:
            raise SpecError("data.source: required: a JSON-lines file, a data directory or a hub id")
        if self.answers is not None and self.answers.source == "test" and self.data.test_fraction == 0:
            raise SpecError("answers.source: test needs held-out prompts, but data.test_fraction is 0; "
                            "set data.test_fraction above 0 or answers.source: train")
        if not self.stages:
            raise SpecError("stages: needs at least one stage, e.g. [{loss: sft, epochs: 1}]")
        names = [s.name for s in self.stages if s.name]
        if len(names) != len(set(names)):
            raise SpecError(f"stages: stage names must be unique, got {preview(names)}")
        for i, stage in enumerate(self.stages):
            stage.name = stage.name or f"{i}-{stage.loss}"

    def to_config(self) -> dict[str, Any]:
        """The resolved spec as a run records it; ``model.tiny`` only when the base model is ``tiny``
        (beside a real base model those settings are unused and would mislead a reader)."""
        config = to_dict(self)
        if self.model.base != "tiny":
            config["model"].pop("tiny", None)
        for absent in ("alarms", "answers"):  # unset: left out, so configs of runs before alarms existed still match
            if config.get(absent) is None:
                config.pop(absent, None)
        if config["probing"].get("ches") is None:
            config["probing"].pop("ches", None)
        return config


def check_plugins(spec: ExperimentSpec, plugins: Plugins) -> None:
    """Plugin names in the spec must be installed; loss hyper-parameters must be the loss's, and
    within the constraints the loss declares (``LossDefinition.check_params``)."""
    from ldreg.errors import closest

    for i, stage in enumerate(spec.stages):
        if stage.loss not in plugins.losses:
            raise SpecError(f"stages[{i}].loss: {plugins.losses.missing(stage.loss)}")
        loss = plugins.losses.get(stage.loss)
        defaults = loss.defaults
        for key in stage.params:
            if key not in defaults:
                raise SpecError(f"stages[{i}].params.{preview(key, 40, quote=False)}: loss {stage.loss!r} has no such "
                                f"hyper-parameter{closest(key[:100], defaults)}; it accepts: "
                                f"{', '.join(sorted(defaults)) or 'none'}")
        stage.params = loss.coerce(stage.params)  # 0.1 -> float, 1 -> true for a switch, "1e-5" -> 1e-05
        problems = loss.check_params(dict(stage.params)) if stage.params else []
        if problems:
            raise SpecError(f"stages[{i}].params.{problems[0]} (loss {stage.loss!r})")
    wanted = spec.probing.all_types()
    for name in wanted:
        if name not in plugins.responses:
            raise SpecError(f"probing.response_types: {plugins.responses.missing(name)}")
    check_generator_options(spec.probing, plugins)
    if spec.backend != "auto" and spec.backend not in plugins.backends:
        raise SpecError(f"backend: no backend {preview(spec.backend)}{closest(spec.backend[:100], plugins.backends.names())}; "
                        f"installed: auto, {', '.join(plugins.backends.names())}")


def check_generator_options(probing: ProbingSpec, plugins: Plugins) -> None:
    """``probing.options`` keys must be read by a probed type (each generator lists its keys in
    ``options``), with values its ``check_options`` accepts. A generator that declares no
    ``options`` may read any key, so then unknown keys pass."""
    from ldreg.errors import closest

    generators = [plugins.responses.get(t) for t in probing.all_types()]
    declared = [getattr(g, "options", None) for g in generators]
    if all(d is not None for d in declared):
        known = sorted({key for d in declared for key in d})
        for key in probing.options:
            if key not in known:
                raise SpecError(f"probing.options.{preview(key, 40, quote=False)}: no probed response type reads "
                                f"this option{closest(key[:100], known)}; they read: {', '.join(known) or 'none'}")
    for generator in generators:
        check = getattr(generator, "check_options", None)
        problems = check(dict(probing.options)) if check else []
        if problems:
            raise SpecError(f"probing.options.{problems[0]} (response type {generator.name!r})")


# ---------------------------------------------------------------- reading files and overrides

def read_yaml(path: Path) -> dict[str, Any]:
    """Safe YAML only (a spec is data, never code), within ``ldreg.yamlsafe``'s limits."""
    data = yamlsafe.load_file(path)
    if data is None:
        raise SpecError(f"{path}: empty; write the spec as YAML keys (see experiments/ and queries/ for examples)")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping of keys to values (key: value), "
                        f"got {type(data).__name__}")
    return data


def load_raw(path: str | Path, _seen: tuple[Path, ...] = (), files: list[Path] | None = None) -> dict[str, Any]:
    """The spec's mapping with every ``include:`` merged in (the including file wins).

    ``files``, if given, collects every file read (this one first, then its includes), so a run can
    keep the spec exactly as the user wrote it.
    """
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise SpecError(f"{_seen[-1]}: include: cycle {chain}; remove one of these includes")
    if len(_seen) >= MAX_INCLUDE_DEPTH:
        raise SpecError(f"{_seen[-1]}: include: more than {MAX_INCLUDE_DEPTH} files deep; flatten the chain")
    data = read_yaml(path)
    if files is not None and path not in files:
        files.append(path)
    include = data.pop("include", None)
    includes = [include] if isinstance(include, str) else include
    if includes is None:
        includes = []
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise SpecError(f"{path}: include: expected a file name or a list of them, got {preview(include)}")
    merged: dict[str, Any] = {}
    for inc in includes:
        target = path.parent / inc
        if not target.is_file():
            what = "is a folder" if target.is_dir() else "no such file"
            raise SpecError(f"{path}: include: {preview(inc, quote=False)}: {what} (looked for {preview(str(target), 120, quote=False)}); "
                            f"include paths are relative to the including file")
        merged = deep_merge(merged, load_raw(target, _seen + (path,), files))
    data = deep_merge(merged, data)
    _resolve_paths(data, path.parent)
    return data


def spec_files(path: str | Path) -> list[Path]:
    """The files a spec is made of: ``path`` and, recursively, what it includes (each once, in reading order)."""
    files: list[Path] = []
    load_raw(path, files=files)
    return files


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative local paths in a spec (``./x``, ``../x``) are relative to the spec file, not the
    working directory: the data source, the model, each stage's reference, probing-set files and
    the generator options that name paths."""

    def fix(holder: Any, key: str) -> None:
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str) and (value.startswith("./") or value.startswith("../")):
            holder[key] = str((base / value).resolve())

    fix(data.get("data"), "source")
    fix(data.get("model"), "base")
    for stage in data.get("stages") or [] if isinstance(data.get("stages"), list) else []:
        fix(stage, "reference")
    probing = data.get("probing")
    sets = probing.get("sets") if isinstance(probing, dict) else None
    for item in sets if isinstance(sets, list) else []:
        fix(item, "source")
    options = probing.get("options") if isinstance(probing, dict) else None
    for key in ("rephrase_model", "wordnet_dir", "fortunes_dir"):  # generator options that name paths
        fix(options, key)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Sacred-style ``key=value`` (values parsed as YAML); dotted keys reach into lists by index."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override {preview(item)}: expected key=value, e.g. seed=3 or stages.1.lr=1e-5")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise SpecError(f"override {preview(item)}: no key before '='; e.g. seed=3")
        try:
            value = yamlsafe.loads(raw, f"override {preview(key.strip(), 40, quote=False)}")
        except SpecError as exc:
            if "not valid YAML" not in str(exc):
                raise
            value = raw
        node: Any = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"override {preview(key, quote=False)}: {preview(here, quote=False)} is not an index "
                                    f"of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise SpecError(f"override {preview(key, quote=False)}: {preview('.'.join(parts[:depth]), quote=False)} "
                                f"is not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and part not in node:
                    node[part] = {}
                node = node[part]
    return data


def _shorthand(data: dict[str, Any]) -> dict[str, Any]:
    """``model: EleutherAI/pythia-410m`` and ``data: Anthropic/hh-rlhf`` stand for {base:...}/{source:...}."""
    data = dict(data)
    if isinstance(data.get("model"), str):
        data["model"] = {"base": data["model"]}
    if isinstance(data.get("data"), str):
        data["data"] = {"source": data["data"]}
    return data


def parse(data: dict[str, Any], plugins: Plugins | None = None) -> ExperimentSpec:
    spec = from_dict(ExperimentSpec, _shorthand(data))
    if plugins is not None:
        check_plugins(spec, plugins)
    return spec


def load(path: str | Path, overrides: list[str] = (), plugins: Plugins | None = None) -> ExperimentSpec:
    """Read, merge includes, apply overrides, validate: the spec a run will use."""
    return parse(apply_overrides(load_raw(path), list(overrides)), plugins)

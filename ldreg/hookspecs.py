"""The plugin contract: every hook a plugin may implement, with what it receives and must do.

The parameter documentation lives here, in the specs (as pytest and tox keep theirs), and
docs/plugin-hooks.md is generated from these docstrings and the classes they name by
``python -m ldreg.hookdocs > docs/plugin-hooks.md``; a test fails when the two differ.

Each ``ldreg_register_*`` hook receives a typed registry and calls its ``add`` method (tox 4
style), so a malformed registration fails at once with an error naming the plugin. Built-in
plugins implement these hooks exactly as third-party ones do, through the ``ldreg`` entry-point
group; a folder of plain ``.py`` files can be loaded too (``ldreg --plugins-dir DIR`` or
``LDREG_PLUGINS_DIR``). Every hook is called through pluggy, once per implementing plugin, so
``LDREG_TRACE_PLUGINS=1`` shows each call, and what it registered, on stderr.

Docstrings here are Markdown: they are copied into docs/plugin-hooks.md as written.
"""


from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ldreg.registry import BackendRegistry, JudgeRegistry, LossRegistry, ResponseRegistry, SourceRegistry

PROJECT = "ldreg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# Beyond the registry, its ``add`` and the item type it takes (which ldreg.hookdocs finds from the
# annotation of ``registry``), the objects a hook's implementer works with, documented beside it.
OBJECTS = {
    "ldreg_register_losses": ("ldreg.losses.SequenceLogps", "ldreg.losses.LossOutput"),
    "ldreg_register_responses": ("ldreg.responses.PreferenceExample", "ldreg.responses.GenerationContext"),
    "ldreg_register_judges": ("ldreg.judging.judge.JudgeQuery",),
}


@hookspec
def ldreg_register_losses(registry: "LossRegistry") -> None:
    """Register finetuning losses: call `registry.add(LossDefinition(...))` once per loss.

    **Receives** `registry`, the `LossRegistry` every plugin adds to. It knows which plugin is
    calling (ldreg calls each plugin's implementation separately), so every error names you.
    **Must** call `registry.add` for each loss and return nothing.

    **`registry.add(definition)`** checks, and raises a `PluginError` naming the plugin when:
    `definition` is not a `LossDefinition`; its `name` is empty or taken by another plugin (both
    are named); `compute` is not callable; `defaults` do not match `compute`'s signature (each key
    a keyword `compute` accepts, each parameter it requires named); `constraints` are unreadable,
    name a key `defaults` lacks, or rule out the defaults. It then stores a copy whose `origin`
    names your plugin, distribution and version.

    **A loss** is a pure function of per-sequence log-probabilities: it never sees the model.
    `compute(logps, **hparams)` receives a `SequenceLogps` (below) and every key of `defaults`
    as a keyword argument (the spec's `stages[i].params` override them) and **must return** a
    `LossOutput` whose `loss` is a 0-dim tensor, finite, computed from `logps` (so it requires
    grad whenever they do: no `.item()`, `.detach()` or `torch.no_grad()`), and whose `metrics`
    map names to Python floats (use `ldreg.losses.detached_metrics`; TRL's names such as
    `rewards/margins` let queries compare your loss with the built-ins). Every call is checked
    (`ldreg.losses.checked_call`): a wrong return, an exception inside `compute`, or a NaN/inf
    loss from finite log-probs stops the run with one message naming the plugin, stage and step.
    The engine derives the paper's residual G = dL/dz from your loss by autograd, so a new loss
    gets ||G|| and its chosen/rejected split logged without writing anything more.

    **`LossDefinition` fields**: `name` (the loss's name in specs); `compute`; `description`
    (one line for `ldreg plugins`); `defaults` (every hyper-parameter with its default: a spec
    may set exactly these); `constraints` (per hyper-parameter, the values that make sense: a
    string `"> 0"`, `">= 0"`, `"< 1"`, `"<= 1"`, an interval `"[0, 0.5)"` whose brackets include
    and parentheses exclude, a set `"{0, 1}"`, or a callable returning what is wrong with a value
    or `None`; checked when a spec is validated); `needs_rejected` (the engine computes y-
    log-probs: `logps.rejected` is set); `needs_reference` (the engine runs the frozen reference
    model: `logps.ref_chosen`/`ref_rejected` are set); `rejected_source` (`"data"`, or
    `"generated"` to have the engine sample y- from the stage's opponent model, as SPIN does);
    `accepts_unpaired` (the loss also trains on unpaired prompt/completion/label data, see
    `desirable` below; a run refuses any other loss on such data before training);
    `needs_mismatched` (a bool, or a callable of the stage's full hyper-parameters: the engine
    computes TRL's mismatched pairs, see below); `check` (a callable of the full
    hyper-parameters returning `"name: problem"` strings, for what no single constraint can judge,
    such as two lists of unequal length; run with the spec, so `--dry-run` names it); `new_state`
    (optional, makes the loss **stateful**: a factory of an object with `state_dict() -> dict` and
    `load_state_dict(dict)`; the engine makes one at each stage's start, passes it to `compute` as
    the keyword `state` (which `compute` must accept), saves its `state_dict()` in every checkpoint
    and restores it on `ldreg run --resume`, so a resumed run equals an uninterrupted one; calls
    outside training, such as the residual tools, get a fresh state, so they change nothing that
    persists; BCO's running mean reward is one); `origin` (set by the registry; leave it empty). A loss that reads soft labels finds them in
    `logps.chosen_prob`, which the engine fills whenever every pair of a batch carries one, so it
    must check it is not `None` (as SPPO's `soft: true` does).

    **`SequenceLogps` fields**, each a tensor of shape `[B]` (one entry per pair of the batch):
    `chosen` (log pi(y+|x) summed over y+'s response tokens, with grad); `chosen_tokens` (how many
    response tokens each sum covers: divide by it for a per-token loss such as IPO's); `rejected`
    and `rejected_tokens` (the same for y-, or for the generated response when
    `rejected_source="generated"`; `None` unless `needs_rejected`); `ref_chosen` and
    `ref_rejected` (the reference model's sums, constants without grad; `None` unless
    `needs_reference`); `chosen_prob` (a soft win probability P(y+ > y-) from the data, `None`
    where the data has none); `desirable` (bool, set only for unpaired data: then `chosen` and
    `ref_chosen` hold each row's one completion, labelled desirable or not, and `rejected`,
    `ref_rejected` are `None`); `mismatched` and `ref_mismatched` (the policy's and the
    reference's sums for TRL's mismatched pairs, prompt i with the completion of i-1 in the batch,
    without grad; `None` unless `needs_mismatched` says so; KTO's KL estimate).
    """


@hookspec
def ldreg_register_responses(registry: "ResponseRegistry") -> None:
    """Register response-type generators: call `registry.add(generator)` once per type.

    Response types are the responses a probing set observes (the paper's Appendix D.1: y+, y-,
    rephrases, permutations, random sentences, ...). **Receives** `registry`, the
    `ResponseRegistry`; **must** call `registry.add` with an instance of a
    `ResponseGenerator` subclass and return nothing. `add` raises a `PluginError` naming the
    plugin for an object that is not a `ResponseGenerator`, an empty `name`, or a `name` another
    plugin took.

    **A generator** sets `name` (the type's name in a spec's `probing.response_types`), `label`
    (how charts and captions call it; empty: the name), `description`, and `needs_model`
    (`True` when it samples from `ctx.model`), and implements `generate(example, ctx)`, which
    receives a `PreferenceExample` and the `GenerationContext` (below) and **must return** the
    response text: a non-empty `str`. It must be deterministic given `ctx`: draw randomness only
    from `ctx.rng(example, self.name)`. Every call is checked: raising, or returning `None`, `""`
    or a non-string, stops the probing set with one message naming the plugin, the type and the
    example id, and nothing is cached (an empty string is accepted for an example whose own y+ or
    y- is empty, and from a `needs_model` generator, whose sample may be empty).
    `provenance(ctx)` returns a JSON-safe dict recorded in the probing set's metadata (which
    model, template or corpus made the text); the default records nothing extra.

    **The probing cache**: a generated probing set is saved once under
    `$LDREG_HOME/cache/probing/<set>-<key>.jsonl` (`LDREG_HOME` defaults to `./.ldreg`) and
    reused by every later run with the same key. The key covers the examples, the response types,
    the sample seed, the model (for `needs_model` types) and each generator's identity: its
    plugin, distribution, version and a hash of its source files (the `.py` files of its package,
    or its module's file). So a corrected or upgraded generator never reuses text it made before,
    and a set is only saved after every call passed.
    """


@hookspec
def ldreg_register_backends(registry: "BackendRegistry") -> None:
    """Register hardware backends: call `registry.add(backend)` once per backend.

    **Receives** `registry`, the `BackendRegistry`; **must** call `registry.add` with an instance
    of a `Backend` subclass and return nothing (`add` raises a `PluginError` naming the plugin for
    another object, an empty `name` or a taken one). A backend sets `name` (the spec's
    `backend:`) and `priority` (the available backend of highest priority wins `backend: auto`),
    and implements `availability()`, returning `(True, "")` or `(False, a reason a person can act
    on)`, and `device()`. It may override the other methods below; their defaults suit a
    device without mixed precision or memory statistics.
    """


# ---- hooks appended by other modules' owners go below this line; ldreg.hookdocs documents every
# ---- @hookspec function of this module, in the order written.


@hookspec
def ldreg_register_executors(registry: "ExecutorRegistry") -> None:
    """Register sweep executors: call `registry.add(executor)` once per executor.

    An executor starts the workers of a sweep (`ldreg sweep run ... --executor NAME`) on some
    engine: processes here (`local`), Ray tasks (`ray`), Slurm job arrays through submitit
    (`slurm`). It never schedules configs itself: every worker claims configs from the database
    (`ldreg.sweep.worker.run_in_env(sweep_id, env)` is the function a remote worker calls), so
    any executor leaves the same records. **Receives** `registry`, the `ExecutorRegistry`;
    **must** call `registry.add` with an instance of an `ldreg.sweep.executor.Executor` subclass
    and return nothing (`add` raises a `PluginError` naming the plugin for another object, an
    empty `name` or a taken one). An executor sets `name`, `description` and `options` (each
    option it accepts, with one line of help), implements `launch(job)`, which starts the workers
    of `job` (an `ldreg.sweep.executor.SweepJob`: the sweep id, how many configs wait, the
    environment every worker needs, the options, a log folder, and `poll()` to call while
    waiting) and returns when they have finished, and overrides `remote(options)` to return
    `True` when its workers may run on other machines (a loopback database is then refused).
    An engine that is an optional dependency is imported with
    `ldreg.sweep.executor.require(module, extra, name)`, which names the extra to install.
    """


@hookspec
def ldreg_register_judges(registry: "JudgeRegistry") -> None:
    """Register pairwise judges: call `registry.add(judge)` once per judge.

    A judge says which of two responses to a prompt is better; `ldreg winrate RUN_A RUN_B --judge
    NAME` asks it about the answers two runs wrote (a spec's `answers:`). **Receives** `registry`,
    the `JudgeRegistry`; **must** call `registry.add` with an instance of an
    `ldreg.judging.judge.Judge` subclass and return nothing (`add` raises a `PluginError` naming the
    plugin for another object, an empty `name` or a taken one).

    **A judge** sets `name`, `description` and `options` (each option's name mapped to
    `(default, one line of help)`; a default of `None` makes it required; `--option KEY=VALUE`
    sets them, and an unknown key is refused with the list), and implements
    `verdicts(queries, settings)`: for each `JudgeQuery` (`prompt`, `first` shown as response A,
    `second` shown as B) it **must return** `"A"`, `"B"` or `"tie"` (neither named), in order,
    deterministically. It never swaps the order itself: ldreg asks every comparison in both
    orders and counts a win only when both agree. `identity(settings)` returns a JSON-safe dict
    of what decides the verdicts (a model's checksum, an endpoint and model name); stored
    verdicts are reused only under the same identity. Every call is checked
    (`ldreg.judging.judge.checked_verdicts`): an exception, a wrong count or an unknown verdict
    stops with one message naming the judge and its plugin. `ldreg.judging.judge.pairwise_prompt`
    builds the text both built-in judges show.
    """


@hookspec
def ldreg_register_sources(registry: "SourceRegistry") -> None:
    """Register source schemes: call `registry.add(SourceScheme(...))` once per `NAME:` prefix.

    A source scheme lets a spec name an input by `NAME:ARG` in `model.base` or in
    `data.source`, and leaves building it to you: ldreg's own paper app
    registers `pretrained:` (a base model pretrained here and cached) and `generated:` (a
    preference set built from real text) this way, so the runner never imports the app.
    **Receives** `registry`, the `SourceRegistry`; **must** call `registry.add` with an
    `ldreg.sources.SourceScheme` and return nothing (`add` raises a `PluginError` naming the plugin
    for another object, an empty `name` or one another plugin took).

    **`SourceScheme` fields**: `name` (the prefix without its colon); `kind` (`"model"` or
    `"data"`: which fields it may stand in); `resolve` (called with `arg`, returns a local path:
    a model folder with config.json, or a data file the `data.format` adapter reads; it may build
    and cache, and is called once per run); `check` (called with the spec's field and `arg`,
    returns one line for `ldreg run --dry-run`, builds nothing, and raises an
    `ldreg.errors.SpecError` naming the field when `arg` is unknown); `description` (one line). A prefix no plugin registered is read as a path or a hub id.
    """

"""Broken plugins are named, never traced back: loss outputs, generated responses, registration.

Plugins here are registered in-process into a real pluggy PluginManager (``load_plugins([...])``);
the pip-installed plugin of docs/writing-plugins.md is exercised in test_third_party_plugin.py.
Each fault in FAULTS is also a row of docs/reliability.md's "Plugins" table, checked below.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from ldreg import spec as specs
from ldreg.errors import LdregError, PluginError
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition, LossOutput, NonFiniteLoss, SequenceLogps, checked_call
from ldreg.registry import PluginWarning, ResponseRegistry, is_builtin, load_plugins, select
from ldreg.responses import PreferenceExample, ResponseGenerator, code_fingerprint

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
WHERE = "stage '1-dpo', step 3"


def _logps(chosen=(-3.0, -4.0)) -> SequenceLogps:
    c = torch.tensor(chosen, requires_grad=True)
    return SequenceLogps(chosen=c, chosen_tokens=torch.tensor([2, 2]))


def _loss_plugin(compute, name="myloss", **kw):
    class Mine:
        @hookimpl
        def ldreg_register_losses(self, registry):
            registry.add(LossDefinition(name=name, compute=compute, description="test", **kw))

    return Mine()


def _call(compute, logps=None, **kw):
    """Register ``compute`` through the real plugin manager and call it as the trainer does."""
    loss = load_plugins([_loss_plugin(compute, **kw)]).losses.get("myloss")
    return checked_call(loss, logps or _logps(), {}, where=WHERE, diverged="lower the learning rate (0.001)")


def _generator_plugin(generate, name="mytype"):
    gen_cls = type("MyGen", (ResponseGenerator,), {"name": name, "generate": lambda self, ex, ctx: generate(ex)})

    class Gens:
        @hookimpl
        def ldreg_register_responses(self, registry):
            registry.add(gen_cls())

    return Gens()


def _module_plugin(source: str, name: str = "bad_plugin_mod") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def _registration(plugin):
    def go():
        load_plugins([plugin])
    return go


def _spec(types_, n=4):
    return specs.parse({"name": "guards", "data": {"source": "unused.jsonl"},
                        "probing": {"every": 4, "response_types": types_, "sets": [{"name": "g", "source": "train", "n": n}]},
                        "stages": [{"loss": "sft"}]})


EXAMPLES = [PreferenceExample(i, f"prompt {i}", f"good answer {i}", f"bad answer {i}") for i in range(4)]


def _probe(generate):
    from ldreg.runner import probing_sets

    plugins = load_plugins([_generator_plugin(generate)])
    return lambda: probing_sets(_spec(["chosen", "mytype"]), EXAMPLES, EXAMPLES, "", None, None, plugins)


# (fault, how it is triggered, the error class, what the message must say) -- each is a docs row.
FAULTS = {
    "loss returns a per-example tensor": (
        lambda: _call(lambda lp: LossOutput(-lp.chosen)), PluginError,
        r"loss 'myloss' \(plugin 'Mine'\) returned a tensor of shape \[2\] at stage '1-dpo', step 3: "
        r"a loss must return a 0-dim tensor; wrap it in LossOutput\(loss.mean\(\), ...\)"),
    "loss returns a bare tensor": (
        lambda: _call(lambda lp: -lp.chosen.mean()), PluginError,
        r"loss 'myloss' \(plugin 'Mine'\) returned a tensor, not a LossOutput at stage '1-dpo', step 3"),
    "loss returns a detached scalar": (
        lambda: _call(lambda lp: LossOutput(-lp.chosen.mean().detach())), PluginError,
        r"returned a loss that does not require grad .* without \.detach\(\)"),
    "loss returns a Python float": (
        lambda: _call(lambda lp: LossOutput(-lp.chosen.mean().item())), PluginError,
        r"returned LossOutput.loss as a float, not a torch tensor"),
    "loss raises": (
        lambda: _call(lambda lp: LossOutput(lp.chosen.mean() * (1 // 0))), PluginError,
        r"loss 'myloss' \(plugin 'Mine'\) raised ZeroDivisionError: integer division or modulo by zero at stage '1-dpo', step 3: "
        r"this is a bug in the loss plugin"),
    "loss is NaN from finite log-probs": (
        lambda: _call(lambda lp: LossOutput(torch.log(lp.chosen.mean() * 0 - 1))), NonFiniteLoss,
        r"stage '1-dpo', step 3: loss is nan from loss 'myloss' \(plugin 'Mine'\) although every input "
        r"log-prob was finite, so the loss plugin produced it"),
    "loss is NaN because the model's log-probs are": (
        lambda: _call(lambda lp: LossOutput(-lp.chosen.mean()), _logps((float("nan"), -4.0))), NonFiniteLoss,
        r"loss is nan; the model's log-probs were already non-finite \(chosen: 1 of 2\), so the model "
        r"diverged, not loss 'myloss' \(plugin 'Mine'\): lower the learning rate \(0.001\)"),
    "defaults name a key compute does not accept": (
        _registration(_loss_plugin(lambda lp, beta: LossOutput(-lp.chosen.mean()), defaults={"beta": 1.0, "gamma": 2.0})),
        PluginError,
        r"plugin 'Mine': loss 'myloss' is declared wrongly: defaults name 'gamma', which compute\(lp, beta\) "
        r"does not accept"),
    "compute requires a parameter defaults lacks": (
        _registration(_loss_plugin(lambda lp, margin: LossOutput(-lp.chosen.mean()))), PluginError,
        r"loss 'myloss' is declared wrongly: compute\(lp, margin\) requires 'margin', which defaults does not name"),
    "a default breaks its own constraint": (
        _registration(_loss_plugin(lambda lp, beta: LossOutput(-lp.chosen.mean()), defaults={"beta": 0.0},
                                   constraints={"beta": "> 0"})), PluginError,
        r"its default beta=0.0 breaks its own constraint: must be > 0"),
    "an unreadable constraint": (
        _registration(_loss_plugin(lambda lp, beta: LossOutput(-lp.chosen.mean()), defaults={"beta": 1.0},
                                   constraints={"beta": "positive"})), PluginError,
        r"constraints\['beta'\]: cannot read constraint 'positive'"),
    "ldreg_* function without @hookimpl": (
        _registration(_module_plugin("def ldreg_register_losses(registry):\n    pass\n")), PluginError,
        r"plugin 'bad_plugin_mod': ldreg_register_losses lacks @hookimpl, so pluggy ignores it and it "
        r"registers nothing: decorate it with @ldreg.hookspecs.hookimpl"),
    "misspelt hook": (
        _registration(_module_plugin("from ldreg.hookspecs import hookimpl\n"
                                     "@hookimpl\ndef ldreg_register_respones(registry):\n    pass\n")), PluginError,
        r"plugin 'bad_plugin_mod': ldreg_register_respones is not an ldreg hook "
        r"\(did you mean ldreg_register_responses\?\)"),
    "generator raises": (
        _probe(lambda ex: ex.chosen[100]), PluginError,
        r"response type 'mytype' \(plugin 'Gens'\) raised IndexError for example \d: string index out of range; "
        r"this is a bug in the generator"),
    "generator returns None": (
        _probe(lambda ex: None), PluginError,
        r"response type 'mytype' \(plugin 'Gens'\) returned NoneType for example \d, not a string"),
    "generator returns an empty string": (
        _probe(lambda ex: "" if ex.id == 1 else "text"), PluginError,
        r"response type 'mytype' \(plugin 'Gens'\) returned an empty string for example 1"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_plugin_fault_gives_one_message_naming_the_plugin(fault):
    trigger, error, message = FAULTS[fault]
    with pytest.raises(error, match=message) as info:
        trigger()
    assert isinstance(info.value, LdregError) and "\n" not in str(info.value) and len(str(info.value)) < 400


def test_reliability_doc_lists_every_fault_tried():
    section = DOC.read_text().split("## Plugins", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1).strip() for m in re.finditer(r"^\| ([^|]+) \|", section, flags=re.M)}
    assert set(FAULTS) <= rows, f"docs/reliability.md's Plugins table lacks: {sorted(set(FAULTS) - rows)}"


# ---- what still works, and what is not cached ---------------------------------------------------


def test_a_good_loss_passes_the_guard_and_keeps_its_gradient():
    out = _call(lambda lp: LossOutput(-lp.chosen.mean(), {"m": 1.0}))
    out.loss.backward()
    assert out.metrics == {"m": 1.0} and float(out.loss.detach()) == pytest.approx(3.5)


def test_a_loss_without_gradient_inputs_is_not_asked_for_one():
    """Evaluating a loss on plain tensors (tests, the residual of stored numbers) needs no grad."""
    loss = load_plugins().losses.get("sft")
    out = loss(SequenceLogps(chosen=torch.tensor([-1.0, -3.0]), chosen_tokens=torch.tensor([1, 1])))
    assert float(out.loss) == pytest.approx(2.0)


def test_the_trainer_names_plugin_stage_and_step(tiny_model_dir, authors_records):
    from ldreg.data.tokenize import TokenLimits, encode_preference
    from ldreg.models import load_model, load_tokenizer
    from ldreg.spec import StageSpec
    from ldreg.train import EncodedExample, Trainer

    tok = load_tokenizer(tiny_model_dir)
    limits = TokenLimits(max_length=64, max_prompt_length=32)
    data = [EncodedExample(i, *encode_preference(tok, r["prompt"], r["chosen"], r["rejected"], limits))
            for i, r in enumerate(authors_records[:4])]
    plugins = load_plugins([_loss_plugin(lambda lp: LossOutput(-lp.chosen))])
    trainer = Trainer(model=load_model(tiny_model_dir), backend=plugins.backends.get("cpu"), pad_id=tok.pad_token_id,
                      losses={"myloss": plugins.losses.get("myloss")}, progress=False)
    with pytest.raises(PluginError, match=r"loss 'myloss' \(plugin 'Mine'\) returned a tensor of shape \[2\] "
                                          r"at stage 'mine', step 1"):
        trainer.run([StageSpec(loss="myloss", name="mine", batch_size=2)], data)


def test_a_failed_generator_caches_nothing_and_a_good_one_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    cache = tmp_path / "cache" / "probing"
    with pytest.raises(PluginError):
        _probe(lambda ex: None)()
    assert not cache.exists() or list(cache.iterdir()) == []
    built = _probe(lambda ex: f"made for {ex.id}")()
    assert built[0].responses["mytype"] == [f"made for {e.id}" for e in built[0].examples]
    assert [f.suffix for f in cache.iterdir()] == [".jsonl"]  # one file, no partial left behind


def test_a_changed_generator_never_reuses_cached_text(tmp_path, monkeypatch):
    """The cache key covers each generator's distribution, version and code: edit the code, new text."""
    from ldreg.runner import probing_sets

    monkeypatch.setenv("LDREG_HOME", str(tmp_path / "home"))
    package = tmp_path / "src" / "mygens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "gen.py"
    template = ("from ldreg.responses import ResponseGenerator\n"
                "class Gen(ResponseGenerator):\n    name = 'mytype'\n"
                "    def generate(self, example, ctx):\n        return {text!r} + example.chosen\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))

    def probe():
        gen = importlib.import_module("mygens.gen")

        class Gens:
            @hookimpl
            def ldreg_register_responses(self, registry):
                registry.add(gen.Gen())

        plugins = load_plugins([Gens()])
        return probing_sets(_spec(["mytype"]), EXAMPLES, EXAMPLES, "", None, None, plugins)[0], gen

    module.write_text(template.format(text="old: "))
    first, gen = probe()
    assert first.responses["mytype"] == ["old: " + e.chosen for e in first.examples]
    again, _ = probe()  # unchanged code: the cached file is reused
    assert again.responses == first.responses
    module.write_text(template.format(text="fixed: "))
    importlib.reload(gen)
    sys.modules.pop("mygens.gen", None)
    fixed, gen2 = probe()
    assert fixed.responses["mytype"] == ["fixed: " + e.chosen for e in fixed.examples]
    assert code_fingerprint(gen2.Gen()) != first.metadata["generators"]["mytype"]["code"]
    assert len(list((tmp_path / "home" / "cache" / "probing").glob("g-*.jsonl"))) == 2


def test_an_empty_response_in_the_data_is_not_blamed_on_the_generator():
    from ldreg.data.probing import build_probing_set
    from ldreg.responses import GenerationContext

    hh_like = [PreferenceExample(0, "p", "a good answer", ""), PreferenceExample(1, "p", "b", "c")]
    built = build_probing_set(hh_like, ["rejected"], GenerationContext(), load_plugins().responses)
    assert built.responses["rejected"] == ["", "c"]


def test_builtin_generators_are_keyed_by_distribution_and_version():
    identity = load_plugins().responses.identity("chosen")
    version = importlib.metadata.version("ldreg")
    assert identity["distribution"] == "ldreg" and identity["version"] == version and len(identity["code"]) == 16


# ---- constraints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss,params,message", [
    ("dpo", {"beta": -1}, "beta: must be > 0 (got -1)"),
    ("dpo", {"label_smoothing": 0.7}, "label_smoothing: must lie in [0, 0.5] (got 0.7)"),
    ("ipo", {"per_token_mean": 0.5}, "per_token_mean: must be true or false (got 0.5)"),
    ("sppo", {"beta": 0}, "beta: must be > 0 (got 0)"),
    ("slic", {"lam": -0.1}, "lam: must be >= 0 (got -0.1)"),
    ("spin", {"beta": float("inf")}, "beta: must be a finite number (got inf)"),
    ("dpo", {"beta": float("nan")}, "beta: must be a finite number (got nan)"),
    ("dpo", {"beta": "0.1"}, "beta: must be a number (got '0.1')"),
    ("dpo", {"gamma": 1.0}, "gamma: not a hyper-parameter of loss 'dpo'; it accepts: beta, label_smoothing"),
])
def test_check_params_uses_declared_constraints(loss, params, message):
    assert load_plugins().losses.get(loss).check_params(params) == [message]


def test_every_builtin_loss_constrains_every_parameter_and_its_defaults_pass():
    for r in load_plugins().losses.registrations():
        assert set(r.item.constraints) == {k for k, v in r.item.defaults.items() if not isinstance(v, bool)}, r.name
        assert r.item.check_params(dict(r.item.defaults)) == [], r.name


def test_callable_and_interval_constraints():
    odd = LossDefinition("odd", lambda lp, k, p: LossOutput(lp.chosen.mean()), "t", defaults={"k": 1, "p": 0.5},
                         constraints={"k": lambda v: None if v % 2 else "must be odd", "p": "(0, 1)"})
    assert odd.check_params({"k": 3, "p": 0.2}) == []
    assert odd.check_params({"k": 2, "p": 1}) == ["k: must be odd (got 2)", "p: must lie in (0, 1) (got 1)"]


# ---- plugin selection -----------------------------------------------------------------------------


def test_builtins_are_recognised_by_distribution_not_entry_point_name(monkeypatch):
    builtin = next(iter(importlib.metadata.entry_points(group="ldreg")))
    impostor = importlib.metadata.EntryPoint("ldreg.sneaky", "json", "ldreg")  # no distribution: third party
    assert is_builtin(builtin) and not is_builtin(impostor)
    load, excluded = select([builtin, impostor], "")
    assert load == [builtin] and excluded == [impostor]


def test_unknown_names_in_LDREG_PLUGINS_warn(monkeypatch):
    monkeypatch.setenv("LDREG_PLUGINS", "no-such-plugin")
    with pytest.warns(PluginWarning, match=r"LDREG_PLUGINS names 'no-such-plugin', which no installed plugin has"):
        plugins = load_plugins()
    assert "sft" in plugins.losses  # built-ins always load


def test_versions_name_every_loaded_plugin():
    versions = load_plugins([_loss_plugin(lambda lp: LossOutput(-lp.chosen.mean()))]).versions()
    assert {"plugin": "ldreg.losses", "distribution": "ldreg", "version": importlib.metadata.version("ldreg")} in versions
    assert {"plugin": "Mine", "distribution": "", "version": ""} in versions


def test_provenance_is_part_of_the_generator_contract():
    """Every generator has provenance() (the ABC's default records nothing extra); an override's keys
    land in the probing set's metadata."""
    from ldreg.data.probing import build_probing_set
    from ldreg.responses import GenerationContext

    class Plain(ResponseGenerator):
        name = "plain"

        def generate(self, example, ctx):
            return example.chosen

    class Sourced(Plain):
        name = "sourced"

        def provenance(self, ctx):
            return {"corpus": f"seed {ctx.seed}"}

    assert Plain().provenance(GenerationContext()) == {}
    registry = ResponseRegistry()
    registry.add(Plain())
    registry.add(Sourced())
    built = build_probing_set(EXAMPLES, ["plain", "sourced"], GenerationContext(seed=3), registry)
    assert "corpus" not in built.metadata["generators"]["plain"]
    assert built.metadata["generators"]["sourced"]["corpus"] == "seed 3"

"""ldreg.testing, used as a plugin author uses it: a plugin file in a folder, never packaged."""

import pytest
import torch

from ldreg import testing
from ldreg.errors import PluginError

PLUGIN = '''
import random

import torch

from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition, LossOutput, detached_metrics
from ldreg.responses import ResponseGenerator


def hinge(logps, beta, margin):
    h = (logps.chosen - logps.ref_chosen) - (logps.rejected - logps.ref_rejected)
    return LossOutput(torch.relu(margin - beta * h).mean(), detached_metrics(**{"rewards/margins": beta * h}))


def flat(logps):
    return LossOutput(logps.chosen.mean() * 0.0 + 1.0)


class Reversed(ResponseGenerator):
    name = "chosen_reversed_words"
    description = "y+ with its words in reverse order"

    def generate(self, example, ctx):
        return " ".join(reversed(example.chosen.split()))


class Shuffled(ResponseGenerator):
    name = "chosen_shuffled_badly"
    description = "y+ shuffled with the global random module: not reproducible"

    def generate(self, example, ctx):
        words = example.chosen.split()
        random.shuffle(words)
        return " ".join(words)


class Blank(ResponseGenerator):
    name = "blank"

    def generate(self, example, ctx):
        return ""


@hookimpl
def ldreg_register_losses(registry):
    registry.add(LossDefinition("my_hinge", hinge, "hinge on the DPO margin", defaults={"beta": 0.1, "margin": 1.0},
                                constraints={"beta": "> 0", "margin": ">= 0"}, needs_rejected=True,
                                needs_reference=True))
    registry.add(LossDefinition("my_flat", flat, "ignores the log-probs"))


@hookimpl
def ldreg_register_responses(registry):
    registry.add(Reversed())
    registry.add(Shuffled())
    registry.add(Blank())
'''


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    path = tmp_path_factory.mktemp("author") / "my_plugin.py"
    path.write_text(PLUGIN)
    return testing.load_plugin(path)


@pytest.fixture(scope="module")
def tiny():
    return testing.tiny_model()


def test_load_plugin_registers_a_file_under_its_name(plugins):
    assert plugins.losses.registration("my_hinge").plugin == "my_plugin"
    assert "sft" in plugins.losses  # the installed plugins load beside it


def test_load_plugin_reports_a_bad_declaration_as_startup_does(tmp_path):
    class Wrong:
        from ldreg.hookspecs import hookimpl

        @hookimpl
        def ldreg_register_losses(self, registry):
            from ldreg.losses import LossDefinition, LossOutput

            registry.add(LossDefinition("wrong", lambda lp, beta: LossOutput(lp.chosen.mean()), "x",
                                        defaults={"gamma": 1.0}))

    with pytest.raises(PluginError, match=r"plugin 'Wrong': loss 'wrong' is declared wrongly: defaults name 'gamma'"):
        testing.load_plugin(Wrong())


def test_sequence_logps_are_real_with_every_field(tiny):
    logps = testing.sequence_logps(tiny, testing.examples(3), chosen_prob=0.7)
    assert logps.chosen.shape == logps.rejected.shape == (3,) and logps.chosen.requires_grad
    assert bool((logps.chosen < 0).all()) and bool((logps.chosen_tokens > 0).all())
    assert torch.equal(logps.ref_chosen, logps.chosen.detach()) and not logps.ref_chosen.requires_grad
    assert logps.chosen_prob.tolist() == pytest.approx([0.7] * 3)


def test_check_loss_passes_a_sound_loss_and_measures_a_step(plugins, tiny):
    result = testing.check_loss(plugins.losses.get("my_hinge"), {"margin": 2.0}, tiny=tiny)
    assert result.loss_after < result.loss_before == pytest.approx(2.0) and result.residual_norm > 0


def test_check_loss_fails_a_loss_with_no_gradient(plugins, tiny):
    with pytest.raises(AssertionError, match=r"loss 'my_flat': G = dL/dz is zero on every token"):
        testing.check_loss(plugins.losses.get("my_flat"), tiny=tiny)


def test_check_loss_fails_params_the_loss_rules_out(plugins, tiny):
    with pytest.raises(AssertionError, match=r"params for loss 'my_hinge': beta: must be > 0 \(got -1.0\)"):
        testing.check_loss(plugins.losses.get("my_hinge"), {"beta": -1.0}, tiny=tiny)


def test_check_generator_passes_a_deterministic_one(plugins):
    texts = testing.check_generator(plugins.responses.get("chosen_reversed_words"))
    first = testing.examples(1)[0]
    assert texts[0] == " ".join(reversed(first.chosen.split())) and len(texts) == 8


def test_check_generator_fails_one_that_is_not_reproducible(plugins):
    with pytest.raises(AssertionError, match=r"'chosen_shuffled_badly' is not deterministic"):
        testing.check_generator(plugins.responses.get("chosen_shuffled_badly"))


def test_check_generator_reports_an_empty_text_as_a_run_would(plugins):
    with pytest.raises(PluginError, match=r"response type 'blank' \(plugin 'my_plugin'\) returned an empty string"):
        testing.check_generator(plugins.responses.get("blank"))


def test_check_generator_gives_a_model_to_a_model_sampling_builtin(tiny):
    plugins = testing.load_plugin()
    texts = testing.check_generator(plugins.responses.get("chosen_selfr"), testing.examples(2), tiny=tiny)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_the_guides_plugin_test_passes_as_written(tmp_path, monkeypatch):
    """docs/writing-plugins.md's ldreg-hello/tests/test_hello.py, run against its ldreg_hello.py."""
    import importlib.util
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text()
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", guide, flags=re.S))
    for rel in ("ldreg-hello/ldreg_hello.py", "ldreg-hello/tests/test_hello.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(files[rel])
    spec = importlib.util.spec_from_file_location("guide_test_hello", tmp_path / "ldreg-hello/tests/test_hello.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [f for name, f in vars(module).items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()

"""The plugin contract: entry-point loading, typed registries, clear errors naming plugins."""

import pytest

from ldreg.errors import PluginError
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition, LossOutput
from ldreg.registry import load_plugins


def _loss(name):
    return LossDefinition(name=name, compute=lambda logps: LossOutput(-logps.chosen.mean()), description="test")


class GoodPlugin:
    @hookimpl
    def ldreg_register_losses(self, registry):
        registry.add(_loss("my_loss"))


def test_builtins_load_through_entry_points():
    plugins = load_plugins()
    assert {"sft", "extend_sft"} <= set(plugins.losses.names())
    assert {"chosen", "chosen_permuted"} <= set(plugins.responses.names())
    assert {"cpu", "cuda", "rocm", "mps"} <= set(plugins.backends.names())
    rows = {r["plugin"]: r for r in plugins.describe()}
    assert rows["ldreg.losses"]["distribution"] == "ldreg" and "sft" in rows["ldreg.losses"]["losses"]


def test_extra_plugin_registers_and_is_attributed():
    plugins = load_plugins([GoodPlugin()])
    assert "my_loss" in plugins.losses
    row = next(r for r in plugins.describe() if "my_loss" in r["losses"])
    assert "GoodPlugin" in row["plugin"] or row["plugin"]


def test_malformed_registration_names_the_plugin():
    class Bad:
        @hookimpl
        def ldreg_register_losses(self, registry):
            registry.add({"name": "dict_loss"})

    with pytest.raises(PluginError, match=r"registered .*dict_loss.* as a loss; expected a ldreg.losses.LossDefinition"):
        load_plugins([Bad()])


def test_two_plugins_one_name_names_both():
    class Clash:
        @hookimpl
        def ldreg_register_losses(self, registry):
            registry.add(_loss("sft"))

    with pytest.raises(PluginError, match=r"'sft' is registered by both 'ldreg.losses' and"):
        load_plugins([Clash()])


def test_misspelt_hook_fails_at_start_up():
    class Typo:
        @hookimpl
        def ldreg_register_loses(self, registry):
            pass

    with pytest.raises(PluginError, match=r"plugin 'Typo': ldreg_register_loses is not an ldreg hook "
                                          r"\(did you mean ldreg_register_losses\?\)"):
        load_plugins([Typo()])


def test_unknown_name_suggests_and_lists():
    plugins = load_plugins()
    with pytest.raises(PluginError, match=r"no loss named 'stf' \(did you mean 'sft'\?\); installed: .*sft"):
        plugins.losses.get("stf")


def test_env_var_restricts_third_party_but_not_builtins(monkeypatch):
    monkeypatch.setenv("LDREG_PLUGINS", "")
    plugins = load_plugins()
    assert "sft" in plugins.losses and "cpu" in plugins.backends

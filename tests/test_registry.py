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
    assert row["plugin"] == "GoodPlugin" and row["losses"] == ["my_loss"] and row["distribution"] == ""
    assert plugins.losses.registration("my_loss").plugin == "GoodPlugin"
    assert plugins.losses.get("my_loss").origin == "plugin 'GoodPlugin'"
    assert "my_loss" not in next(r for r in plugins.describe() if r["plugin"] == "ldreg.losses")["losses"]


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


# ---- hooks go through pluggy, one plugin at a time ---------------------------------------------


class Watcher:
    """A new-style pluggy wrapper around every loss registration: it sees each plugin's call."""

    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def ldreg_register_losses(self, registry):
        before = set(registry.names())
        result = yield
        self.seen.append((registry.plugin, sorted(set(registry.names()) - before)))
        return result


def test_hooks_are_called_through_pluggy_so_wrappers_see_each_plugin():
    watcher = Watcher()
    plugins = load_plugins([GoodPlugin(), watcher])
    seen = dict(watcher.seen)
    assert seen["GoodPlugin"] == ["my_loss"]
    assert "sft" in seen["ldreg.losses"] and "my_loss" not in seen["ldreg.losses"]
    assert "Watcher" not in seen  # a wrapper registers nothing and is not called on its own
    assert sorted(n for names in seen.values() for n in names) == plugins.losses.names()


def test_hook_call_monitoring_sees_one_call_per_plugin():
    from ldreg.registry import collect, make_manager

    pm = make_manager([GoodPlugin()])
    calls = []
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append((name, [pm.get_name(i.plugin) for i in impls])),
                               lambda *args: None)
    from ldreg.registry import LossRegistry

    collect(pm, "ldreg_register_losses", LossRegistry(), {})
    assert calls == [("ldreg_register_losses", ["GoodPlugin"])]


def test_a_plugin_raising_in_a_hook_is_named():
    class Raises:
        @hookimpl
        def ldreg_register_losses(self, registry):
            raise KeyError("oops")

    with pytest.raises(PluginError, match=r"plugin 'Raises' failed in ldreg_register_losses: KeyError: 'oops'"):
        load_plugins([Raises()])


def test_tracing_prints_each_call_and_what_it_registered(monkeypatch, capsys):
    monkeypatch.setenv("LDREG_TRACE_PLUGINS", "1")
    load_plugins([GoodPlugin()])
    err = capsys.readouterr().err
    assert "ldreg-trace: call ldreg_register_losses(registry=LossRegistry) -> plugin 'GoodPlugin'" in err
    assert "ldreg-trace:   plugin 'GoodPlugin' registered 1 loss: my_loss" in err
    assert "ldreg-trace:   plugin 'ldreg.backends', ldreg" in err and "backends: cpu" in err
    monkeypatch.setenv("LDREG_TRACE_PLUGINS", "0")
    load_plugins([GoodPlugin()])
    assert "ldreg-trace" not in capsys.readouterr().err

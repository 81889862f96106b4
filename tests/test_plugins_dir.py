"""Plugins from a folder (--plugins-dir / LDREG_PLUGINS_DIR): loaded, attributed, errors named."""

import json

import pytest
from click.testing import CliRunner

from ldreg import registry
from ldreg.cli import main
from ldreg.errors import PluginError

LOSS_FILE = '''
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition, LossOutput


def folder_loss(logps, scale):
    return LossOutput(-scale * logps.chosen.mean())


@hookimpl
def ldreg_register_losses(registry):
    registry.add(LossDefinition("folder_loss", folder_loss, "a loss from a plugins folder",
                                defaults={"scale": 1.0}, constraints={"scale": "> 0"}))
'''


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A plugins folder with one loss plugin, named by LDREG_PLUGINS_DIR (restored afterwards)."""
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    (tmp_path / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.setenv("LDREG_PLUGINS_DIR", str(tmp_path))
    registry.reset()
    yield tmp_path
    registry.reset()


def test_a_folder_plugin_registers_under_its_file_name_with_its_path(folder):
    plugins = registry.load_plugins()
    assert plugins.losses.registration("folder_loss").plugin == "my_losses"
    assert plugins.losses.get("folder_loss").check_params({"scale": -1.0}) == ["scale: must be > 0 (got -1.0)"]
    row = next(r for r in plugins.describe() if r["plugin"] == "my_losses")
    assert row["origin"] == str(folder / "my_losses.py") and row["losses"] == ["folder_loss"]
    assert {"plugin": "my_losses", "distribution": "", "version": "", "origin": str(folder / "my_losses.py")} \
        in plugins.versions()
    assert all(r["origin"] == "" for r in plugins.describe() if r["plugin"] != "my_losses")


def test_folder_plugins_load_whatever_LDREG_PLUGINS_selects(folder, monkeypatch):
    monkeypatch.setenv("LDREG_PLUGINS", "")
    assert "folder_loss" in registry.load_plugins().losses


def test_an_edited_file_is_read_again_at_the_next_load(folder):
    registry.load_plugins()
    (folder / "my_losses.py").write_text(LOSS_FILE.replace('"folder_loss"', '"renamed_loss"'))
    plugins = registry.load_plugins()
    assert "renamed_loss" in plugins.losses and "folder_loss" not in plugins.losses


def test_a_broken_file_is_one_message_naming_the_file_and_line(folder):
    (folder / "broken.py").write_text("from ldreg.hookspecs import hookimpl\n\ndef oops(:\n    pass\n")
    with pytest.raises(PluginError, match=rf"^plugin file {folder / 'broken.py'}:3 failed to load: SyntaxError: "):
        registry.load_plugins()
    (folder / "broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(PluginError, match=r"broken.py:1 failed to load: ModuleNotFoundError: No module named "
                                          r"'no_such_module_here'; fix the file or move it out of the plugins folder"):
        registry.load_plugins()


def test_a_misspelt_hook_in_a_folder_plugin_names_its_file(folder):
    (folder / "typo.py").write_text("from ldreg.hookspecs import hookimpl\n\n@hookimpl\n"
                                    "def ldreg_register_loss(registry):\n    pass\n")
    with pytest.raises(PluginError, match=rf"plugin 'typo' \({folder / 'typo.py'}\): ldreg_register_loss is not an "
                                          rf"ldreg hook \(did you mean ldreg_register_losses\?\)"):
        registry.load_plugins()


def test_two_folders_with_one_file_name_are_refused(folder, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("other")
    (other / "my_losses.py").write_text("")
    monkeypatch.setenv("LDREG_PLUGINS_DIR", f"{folder}:{other}")
    with pytest.raises(PluginError, match=rf"plugin file {other / 'my_losses.py'}: the plugin name 'my_losses' is "
                                          rf"taken by {folder / 'my_losses.py'}; rename the file"):
        registry.load_plugins()


def test_a_missing_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("LDREG_PLUGINS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(PluginError, match=r"LDREG_PLUGINS_DIR='.*nowhere': no such folder"):
        registry.load_plugins()


def test_cli_plugins_dir_option_lists_the_plugin_with_its_origin(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    monkeypatch.setenv("LDREG_PLUGINS_DIR", "")  # restored after the test; the option overrides it
    registry.reset()
    try:
        result = CliRunner().invoke(main, ["--plugins-dir", str(tmp_path), "plugins", "--json"])
        assert result.exit_code == 0, result.output
        row = next(r for r in json.loads(result.output) if r["plugin"] == "my_losses")
        assert row["origin"] == str(tmp_path / "my_losses.py") and row["losses"] == ["folder_loss"]
        (tmp_path / "my_losses.py").write_text("def broken(:\n")
        result = CliRunner().invoke(main, ["--plugins-dir", str(tmp_path), "plugins"])
        assert result.exit_code == 2
        assert "failed to load: SyntaxError" in result.output and "Traceback" not in result.output
    finally:
        registry.reset()

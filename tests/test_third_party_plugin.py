"""docs/writing-plugins.md, executed: build its plugin distribution, pip install it, use it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ldreg import registry, spec as specs
from ldreg.cli import main

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "writing-plugins.md"


def _guide_files() -> dict[str, str]:
    """The files the guide tells a user to write: `<!-- file: PATH -->` before a code block."""
    text = GUIDE.read_text()
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    files = _guide_files()
    assert {"ldreg-hello/pyproject.toml", "ldreg-hello/ldreg_hello.py", "hello.yaml"} <= set(files)
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(pip + [str(root / "ldreg-hello")], check=True, capture_output=True)
    registry.reset()
    yield root
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "ldreg-hello"], check=True,
                   capture_output=True)
    registry.reset()


def test_installed_plugin_is_listed(installed_plugin):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert '"plugin": "hello"' in result.output and "hello_hinge" in result.output
    assert '"distribution": "ldreg-hello"' in result.output


def test_installed_loss_is_usable_by_name_in_a_spec(installed_plugin, monkeypatch):
    monkeypatch.chdir(REPO)
    plugins = registry.get_plugins()
    spec = specs.load(installed_plugin / "hello.yaml", plugins=plugins)
    assert spec.stages[1].loss == "hello_hinge" and spec.stages[1].params == {"margin": 2.0, "beta": 0.1}
    loss = plugins.losses.get("hello_hinge")
    import torch
    from ldreg.losses import SequenceLogps

    out = loss(SequenceLogps(chosen=torch.tensor([-1.0]), chosen_tokens=torch.tensor([1]),
                             rejected=torch.tensor([-2.0]), rejected_tokens=torch.tensor([1]),
                             ref_chosen=torch.tensor([-1.0]), ref_rejected=torch.tensor([-1.0])), margin=2.0)
    assert out.loss.item() == pytest.approx(2.0 - 0.1 * 1.0)  # relu(2 - beta * ((0) - (-1)))


def test_restricting_plugins_leaves_it_out(installed_plugin, monkeypatch):
    monkeypatch.setenv("LDREG_PLUGINS", "someone_else")
    with pytest.warns(registry.PluginWarning, match=r"'someone_else', which no installed plugin has.*ldreg-hello"):
        plugins = registry.load_plugins()
    assert "hello_hinge" not in plugins.losses
    with pytest.raises(registry.PluginError, match=r"loss 'hello_hinge' is installed but excluded by "
                                                   r"LDREG_PLUGINS='someone_else': it comes from plugin 'hello', "
                                                   r"ldreg-hello 0.1.0; add ldreg-hello to LDREG_PLUGINS"):
        plugins.losses.get("hello_hinge")
    with pytest.raises(registry.PluginError, match=r"no loss named 'nothing_like_it'"):
        plugins.losses.get("nothing_like_it")
    for selection in ("hello", "ldreg-hello", "LDREG_hello"):  # entry-point or distribution name
        monkeypatch.setenv("LDREG_PLUGINS", selection)
        assert "hello_hinge" in registry.load_plugins().losses


def test_the_plugin_is_recorded_with_its_version_and_guarded(installed_plugin):
    plugins = registry.load_plugins()
    assert {"plugin": "hello", "distribution": "ldreg-hello", "version": "0.1.0"} in plugins.versions()
    loss = plugins.losses.get("hello_hinge")
    assert loss.check_params({"beta": -1.0, "margin": 2.0}) == ["beta: must be > 0 (got -1.0)"]
    import torch
    from ldreg.losses import NonFiniteLoss, SequenceLogps

    nan = SequenceLogps(chosen=torch.tensor([-1.0]), chosen_tokens=torch.tensor([1]),
                        rejected=torch.tensor([-2.0]), rejected_tokens=torch.tensor([1]),
                        ref_chosen=torch.tensor([float("nan")]), ref_rejected=torch.tensor([-1.0]))
    with pytest.raises(NonFiniteLoss, match=r"ref_chosen: 1 of 1\), so the model diverged, not loss 'hello_hinge' "
                             r"\(plugin 'hello', ldreg-hello 0.1.0\)"):
        loss(nan)

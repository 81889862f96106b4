"""The core does not reach into the paper app or into other modules' privates; the app's inputs
arrive as source schemes (ldreg.sources) registered through the plugin hook."""

from __future__ import annotations

import ast
import re
import json
from pathlib import Path

import pytest

from ldreg.errors import PluginError, SpecError
from ldreg.hookspecs import hookimpl
from ldreg.registry import get_plugins, load_plugins
from ldreg.sources import SourceScheme, resolve, scheme_for, split

ROOT = Path(__file__).resolve().parent.parent / "ldreg"
# the app itself, and the CLI whose demo/findings/pretrain commands are the app's front door
APP = ("paper/", "cli.py")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in ``path``, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def test_the_core_never_imports_the_paper_app():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(APP):
            continue
        for module, names, line in _imports(path):
            if module == "ldreg.paper" or module.startswith("ldreg.paper.") or (module == "ldreg" and "paper" in names):
                offenders.append(f"ldreg/{rel}:{line} imports {module}")
    assert not offenders, offenders


def test_the_scanner_sees_lazy_imports(tmp_path):
    """The scan above would pass vacuously if it missed imports inside functions."""
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from ldreg.paper.pretrain import pretrained_path\n    import ldreg.paper.demo\n")
    assert [m for m, _, _ in _imports(probe)] == ["ldreg.paper.pretrain", "ldreg.paper.demo"]


def test_integrations_import_no_private_names():
    offenders = [f"{path.name}:{line} {module}.{name}"
                 for path in sorted((ROOT / "integrations").glob("*.py"))
                 for module, names, line in _imports(path) if module.startswith("ldreg")
                 for name in names if name.startswith("_")]
    assert not offenders, offenders


def test_the_paper_app_registers_its_schemes_as_a_plugin():
    registry = get_plugins().source_schemes
    assert {"pretrained", "generated"} <= set(registry.names())
    assert registry.registration("pretrained").plugin == "ldreg.paper"
    assert registry.get("pretrained").kind == "model" and registry.get("generated").kind == "data"


class FilePlugin:
    """A third-party scheme: ``rows:NAME`` is a JSON-lines file written by the test."""

    def __init__(self, folder: Path):
        self.folder = folder

    @hookimpl
    def ldreg_register_sources(self, registry):
        def check(field, name):
            if not (self.folder / f"{name}.jsonl").exists():
                raise SpecError(f"{field}: no rows named {name!r}")
            return f"{field}: rows:{name}"

        registry.add(SourceScheme("rows", "data", lambda name: str(self.folder / f"{name}.jsonl"), check))


def test_a_registered_scheme_resolves_only_for_its_kind(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    plugins = load_plugins([FilePlugin(tmp_path)], third_party=False)
    assert resolve("rows:pairs", "data", plugins) == str(tmp_path / "pairs.jsonl")
    assert scheme_for("rows:pairs", "model", plugins) is None  # a data scheme never names a model
    assert resolve("rows:pairs", "model", plugins) == "rows:pairs"
    assert resolve("org/name", "data", plugins) == "org/name"  # no prefix: a hub id, untouched
    assert split("C:\\data\\x.jsonl") is None and split("zoo:smollm2-135m") == ("zoo", "smollm2-135m")


def test_preflight_asks_the_scheme_and_names_the_field(tmp_path):
    from ldreg import preflight
    from ldreg.spec import parse

    (tmp_path / "pairs.jsonl").write_text("")
    plugins = load_plugins([FilePlugin(tmp_path)], third_party=False)
    spec = parse({"model": {"base": "tiny"}, "data": {"source": "rows:pairs"}, "stages": [{"loss": "sft"}]})
    assert preflight.check_data(spec, plugins)[0] == ["data.source: rows:pairs"]
    spec.data.source = "rows:missing"
    with pytest.raises(SpecError, match=r"^data.source: no rows named 'missing'"):
        preflight.check_data(spec, plugins)
    with pytest.raises(SpecError, match=r"^stages\[1\].reference: no pretrained preset 'nope'"):
        preflight.check_model("stages[1].reference", "pretrained:nope", get_plugins())


def test_a_scheme_registry_refuses_other_objects():
    class Bad:
        @hookimpl
        def ldreg_register_sources(self, registry):
            registry.add({"name": "x"})

    with pytest.raises(PluginError, match="expected a ldreg.sources.SourceScheme"):
        load_plugins([Bad()], third_party=False)


def test_extras_are_due_before_training_and_once_per_crossed_multiple():
    """The schedule the runner and the TRL callback share (``runner.extras_due``): batch 4, a probe
    each batch, every 6 examples -> due at 0, 8, 12, 20, 24 (the docstring's example)."""
    from ldreg.runner import extras_due
    from ldreg.train import Clock

    due, previous = [], None
    for step in range(7):
        if extras_due(6, Clock(step=step, examples_seen=4 * step), previous):
            due.append(4 * step)
        previous = 4 * step
    assert due == [0, 8, 12, 20, 24]
    assert extras_due(0, Clock(step=0), None) and not extras_due(0, Clock(step=3, examples_seen=12), 8)


def test_every_loss_declaration_is_read_by_ldreg():
    """A LossDefinition field nobody reads misleads plugin authors (``sft_targets`` and
    ``needs_soft_labels`` were such): each must be read as ``.field`` somewhere in ldreg itself
    (the plugin-test helper ldreg.testing does not count)."""
    import dataclasses

    from ldreg.losses import LossDefinition

    text = "\n".join(p.read_text() for p in ROOT.rglob("*.py") if p.name != "testing.py")
    unread = [f.name for f in dataclasses.fields(LossDefinition) if not re.search(rf"\.{f.name}\b", text)]
    assert not unread, unread

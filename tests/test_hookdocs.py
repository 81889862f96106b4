"""docs/plugin-hooks.md is generated from the hookspecs; the committed file must equal a fresh one."""

import dataclasses
import re
from pathlib import Path

from ldreg import hookdocs, hookspecs

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugin-hooks.md"


def test_committed_plugin_hooks_doc_equals_the_generated_one():
    assert DOC.read_text() == hookdocs.render(), f"docs/plugin-hooks.md is stale: run `{hookdocs.COMMAND}`"


def test_the_check_command_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "plugin-hooks.md"
    stale.write_text(hookdocs.render().replace("Register finetuning losses", "Register losses"))
    assert hookdocs.main(["--check", str(stale)]) == 1
    assert hookdocs.COMMAND in capsys.readouterr().err
    assert hookdocs.main(["--check", str(DOC)]) == 0


def test_every_hookspec_is_found_and_documented_with_its_registry():
    names = [h.__name__ for h in hookdocs.hooks()]
    declared = [n for n, f in vars(hookspecs).items() if n.startswith("ldreg_") and callable(f)]
    assert names == declared and "ldreg_register_losses" in names
    text = hookdocs.render()
    for hook in hookdocs.hooks():
        section = text.split(f"## {hook.__name__}\n", 1)[1].split("\n## ", 1)[0]
        assert hookdocs.signature(hook) in section
        registry = hookdocs._registry_class(hook)
        assert f"### `{registry.__name__}.add`" in section
        assert f"`{registry.item_type.__module__}.{registry.item_type.__qualname__}`" in section


def test_every_field_a_plugin_sees_is_described_in_prose():
    """A field added to LossDefinition, SequenceLogps, ... without a word on it fails here."""
    text = hookdocs.render()
    for hook in hookdocs.hooks():
        section = text.split(f"## {hook.__name__}\n", 1)[1].split("\n## ", 1)[0]
        prose = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
        classes = [hookdocs._registry_class(hook).item_type]
        classes += [hookdocs._resolve(p) for p in hookspecs.OBJECTS.get(hook.__name__, ())]
        for cls in (c for c in classes if dataclasses.is_dataclass(c)):
            for f in dataclasses.fields(cls):
                assert re.search(rf"`(\w+\.)?{f.name}`", prose), \
                    f"{cls.__name__}.{f.name} is not described in {hook.__name__}"

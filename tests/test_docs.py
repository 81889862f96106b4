"""Every hook is documented in docs/plugin-hooks.md with its exact signature."""

import inspect
from pathlib import Path

from ldreg import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _hooks():
    return {n: f for n, f in vars(hookspecs).items() if n.startswith("ldreg_") and callable(f)}


def _signature(fn) -> str:
    return f"{fn.__name__}{inspect.signature(fn)}".replace("'", "").replace('"', "")


def test_every_hook_is_documented_with_its_exact_signature():
    text = (DOCS / "plugin-hooks.md").read_text()
    assert _hooks(), "no hooks found"
    for name, fn in _hooks().items():
        assert f"## {name}" in text, f"{name} has no section in docs/plugin-hooks.md"
        assert _signature(fn) in text, f"docs/plugin-hooks.md does not show {_signature(fn)}"


def test_writing_plugins_guide_mentions_every_hook():
    """The guide names each hook (a link to the reference alone would let a new hook go unmentioned)."""
    text = (DOCS / "writing-plugins.md").read_text()
    assert "plugin-hooks.md" in text, "docs/writing-plugins.md does not link the hook reference"
    missing = [name for name in _hooks() if name not in text]
    assert not missing, f"docs/writing-plugins.md never names {', '.join(missing)}"

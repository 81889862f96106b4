"""docs/math.md links each formula to the code and the test that implement it; every link must
resolve, or the notes would send a reader to code that no longer exists."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MATH = REPO / "docs" / "math.md"
LINK = re.compile(r"`((?:ldreg|plugins|tests)/[\w/]+\.py)::(\w+)`")


def defined_names(path: Path) -> set[str]:
    """Functions, classes (and their methods) and module-level assignments defined in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def sections() -> dict[str, str]:
    parts = re.split(r"^## ", MATH.read_text(), flags=re.M)[1:]
    return {part.splitlines()[0]: part for part in parts}


LINKS = sorted(set(LINK.findall(MATH.read_text())))


def test_the_notes_link_code_and_tests():
    assert len(LINKS) > 40
    assert {path.split("/")[0] for path, _ in LINKS} == {"ldreg", "plugins", "tests"}


@pytest.mark.parametrize("path, name", LINKS, ids=[f"{p}::{n}" for p, n in LINKS])
def test_every_link_resolves(path, name):
    file = REPO / path
    assert file.is_file(), f"docs/math.md links {path}, which does not exist"
    assert name in defined_names(file), f"docs/math.md links {path}::{name}, which {path} does not define"


def test_every_formula_section_links_its_code_and_its_test():
    for title, text in sections().items():
        if title.startswith("1."):  # notation: conventions, linked where they have code
            continue
        linked = {path.split("/")[0] for path, _ in LINK.findall(text)}
        assert "tests" in linked and linked & {"ldreg", "plugins"}, f"section {title!r} links no code or no test"


def test_nothing_cites_the_absent_math_file():
    """The notes live in docs/math.md; MATH.md is not in the repository."""
    roots = [REPO / "ldreg", REPO / "plugins", REPO / "tests", REPO / "docs", REPO / "experiments"]
    files = [REPO / "README.md", *(f for root in roots for f in root.rglob("*") if f.suffix in (".py", ".md", ".yaml"))]
    citing = [str(f.relative_to(REPO)) for f in files if f != Path(__file__) and b"MATH.md" in f.read_bytes()]
    assert citing == []

"""Packaging kept honest: pyproject declares ranges, constraints.txt locks the tested versions,
constraints-lowest.txt pins each range's lower bound, and what pyproject names exists.

These read the files as they are in the repository (not the installed metadata), so a change to
one file that the others do not follow fails here rather than at a user's `pip install`.
"""

import importlib
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def requirements(*extras: str) -> list[Requirement]:
    """The core dependencies, plus those of the named extras (every extra when none are named)."""
    optional = PROJECT.get("optional-dependencies", {})
    names = extras or tuple(optional)
    return [Requirement(r) for r in PROJECT["dependencies"] + [r for e in names for r in optional[e]]]


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"pyproject.toml: {req} needs one lower bound (>=), the lowest version tested"
    return bounds[0]


@pytest.mark.parametrize("req", requirements(), ids=str)
def test_every_dependency_is_a_range_up_to_the_next_major(req):
    uppers = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert not [s for s in req.specifier if s.operator in ("==", "===", "~=")], f"{req}: an exact pin"
    assert len(uppers) == 1 and lower_bound(req) < uppers[0], f"{req}: give >=LOWEST,<NEXT_MAJOR"


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    locked = pins(REPO / "constraints.txt")
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"constraints.txt has no pin for {req.name}: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={locked[name]}, outside pyproject's {req.specifier}"


def test_the_lowest_pins_are_the_declared_lower_bounds():
    """What `make test-lowest` installs (core, embedded and test) is exactly each lower bound."""
    lowest = pins(REPO / "constraints-lowest.txt")
    declared = {canonicalize_name(r.name): lower_bound(r) for r in requirements("embedded", "test")}
    assert lowest == declared


def test_python_is_a_floor_not_a_ceiling():
    assert PROJECT["requires-python"] == ">=3.11"


def test_every_entry_point_resolves():
    """Every console script and plugin entry point in pyproject imports (module, then attribute)."""
    points = dict(PROJECT.get("scripts", {}))
    for group in PROJECT.get("entry-points", {}).values():
        points.update(group)
    assert points, "pyproject.toml declares no entry points"
    for name, target in points.items():
        module, _, attr = target.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        assert callable(obj) or not attr, f"{name} = {target!r} is not callable"


def test_the_hand_listed_packages_are_every_package_on_disk():
    """plugins/ installs as ldreg_plugins, so packages are listed by hand; none may be missed."""
    roots = {package: REPO / folder for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()}
    on_disk = set()
    for package, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                on_disk.add(".".join((package, *parts)))
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == on_disk

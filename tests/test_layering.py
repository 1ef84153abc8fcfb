"""Who may import whom: the package map of docs/architecture.md, read from the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Each package and the packages (besides itself) it may import, at any depth.
ALLOWED = {
    "flare_protocol": set(),
    "provisioning": {"flare_protocol"},
    "flare_server": {"flare_protocol"},
    "flare_site": {"flare_protocol"},
    "flare_admin": {"flare_protocol"},
    "flare_job": {"flare_protocol", "flare_local"},
    "flare_local": {"flare_protocol", "provisioning", "flare_admin"},
    "flare_cli": set(),  # imports sub-commands by name, lazily
}
OURS = set(ALLOWED)
#: Folders allowed more than their package: an adapter over another package's API.
ALSO = {"flare_admin/compat": {"flare_job"}}  # Scaleout's APIClient builds jobs with the Job API


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


def _also(relative: Path) -> set[str]:
    return {
        name for folder, names in ALSO.items() if relative.is_relative_to(folder) for name in names
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_the_map_allows(package: str):
    root = REPO / package
    if not root.is_dir():
        pytest.fail(f"{package}/ is in the map but not in the tree: update ALLOWED")
    wrong = {
        str(path.relative_to(REPO)): sorted(
            _imports(path) - ALLOWED[package] - {package} - _also(path.relative_to(REPO))
        )
        for path in sorted(root.rglob("*.py"))
        if "_generated" not in path.parts
    }
    wrong = {path: names for path, names in wrong.items() if names}
    assert not wrong, f"imports outside the package map (docs/architecture.md): {wrong}"


def test_every_package_is_on_the_map():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench", "scripts"}
    assert packages <= OURS, f"packages missing from the map: {sorted(packages - OURS)}"

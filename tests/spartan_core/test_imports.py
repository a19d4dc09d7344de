"""spartan_core is the bottom layer: it imports none of the project's other packages.

The import-linter contracts in pyproject.toml say the same for CI; this test reads every
import statement, those inside functions included, so a lazy import cannot hide one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import spartan_core

PACKAGE = Path(spartan_core.__file__).parent
ABOVE = ("cost_models", "runtime", "worker", "api", "cli", "spartan")


def _imported(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_a_package_above() -> None:
    found = {
        str(path.relative_to(PACKAGE)): sorted(_imported(path) & set(ABOVE))
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {name: above for name, above in found.items() if above} == {}


def test_importing_it_loads_no_package_above() -> None:
    code = (
        "import pkgutil, sys, spartan_core\n"
        "for info in pkgutil.walk_packages(spartan_core.__path__, 'spartan_core.'):\n"
        "    __import__(info.name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(ABOVE)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

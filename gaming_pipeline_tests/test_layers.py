"""The layers the README's layout describes hold: the logic (lib/, the ingest service, the
registry) imports no Dagster and nothing of the layers built on it, and the Dagster wiring
(defs/) nothing of the local stack, so that a deployment loads no demo code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "gaming_pipeline"
# Each layer, and the module prefixes it must not import (at the top or inside a function).
FORBIDDEN = {
    "lib": ("dagster", "dagster_aws", "gaming_pipeline.defs", "gaming_pipeline.local", "gaming_pipeline.cli"),
    "ingest_service": ("dagster", "gaming_pipeline.defs", "gaming_pipeline.local", "gaming_pipeline.cli"),
    "games.py": ("dagster", "gaming_pipeline.defs", "gaming_pipeline.local"),
    "defs": ("gaming_pipeline.local", "gaming_pipeline.cli"),
}


def imported_modules(source: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_of_the_layers_built_on_it(layer):
    root = PACKAGE / layer
    sources = [root] if root.is_file() else sorted(root.rglob("*.py"))
    crossings = {
        f"{source.relative_to(PACKAGE)}: {name}"
        for source in sources
        for name in imported_modules(source)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN[layer])
    }
    assert sorted(crossings) == []

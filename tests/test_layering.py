"""Imports only go down: models/ is torch only, tasks/ never reaches up into flows/; and no
layer imports a private module of Ray (`ray.train.v2._internal`, `ray._private`): they change
without notice between releases.

Every .py under models/ and tasks/ is parsed with `ast`, so an import inside a function counts as
much as one at the top of the file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT

# Top-level packages each layer must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "models": frozenset({"tasks", "flows", "prefect", "mlflow", "ray", "boto3", "botocore"}),
    "tasks": frozenset({"flows"}),
    "flows": frozenset(),
}
# Packages whose private modules (a dotted part starting with "_") no layer may import.
PRIVATE_OFF_LIMITS = frozenset({"ray"})


@dataclass(frozen=True)
class Violation:
    """One import that goes against the layering."""

    path: Path
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported}"


def _module_parts(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the tree, relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # `from .. import x`: the names are the modules
                found.extend((node.lineno, ".".join([*base, a.name])) for a in node.names)
    return found


def layering_violations(root: Path) -> list[Violation]:
    """Every import under root/models, root/tasks and root/flows that a layer must not make."""
    violations: list[Violation] = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            parts = _module_parts(path, root)
            package = parts if path.name == "__init__.py" else parts[:-1]
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, module in _imported_modules(tree, package):
                top, *rest = module.split(".")
                private = top in PRIVATE_OFF_LIMITS and any(p.startswith("_") for p in rest)
                if top in forbidden or private:
                    violations.append(Violation(path.relative_to(root), line, module))
    return violations


def test_models_and_tasks_import_only_downwards() -> None:
    violations = layering_violations(REPO_ROOT)
    assert not violations, "layering broken:\n" + "\n".join(map(str, violations))
    # The checker did read the tree: models/ and tasks/ hold dozens of modules.
    assert len(list((REPO_ROOT / "models").rglob("*.py"))) > 10
    assert len(list((REPO_ROOT / "tasks").rglob("*.py"))) > 10


@pytest.mark.parametrize(
    ("path", "source", "imported"),
    [
        ("models/a.py", "import mlflow\n", "mlflow"),
        ("models/a.py", "import torch, ray.train\n", "ray.train"),
        ("models/sub/b.py", "from tasks.storage import join\n", "tasks.storage"),
        ("models/sub/b.py", "def f():\n    import boto3\n", "boto3"),
        (
            "models/sub/b.py",
            "class C:\n    def m(self):\n        from prefect import task\n",
            "prefect",
        ),
        ("models/sub/b.py", "from ...flows import cli\n", "flows"),
        ("models/sub/b.py", "from ... import tasks\n", "tasks"),
        ("tasks/x.py", "from flows.cli import main\n", "flows.cli"),
        ("tasks/deep/y.py", "def g():\n    from ...flows.cli import main\n", "flows.cli"),
        (
            "tasks/x.py",
            "from ray.train.v2._internal.execution import context\n",
            "ray.train.v2._internal.execution",
        ),
        ("flows/f.py", "import ray._private.services\n", "ray._private.services"),
    ],
)
def test_the_checker_finds_a_planted_violation(
    tmp_path: Path, path: str, source: str, imported: str
) -> None:
    for folder in ("models/sub", "tasks/deep", "flows"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "models" / "ok.py").write_text("import torch\nfrom models.sub import b\n")
    (tmp_path / "tasks" / "ok.py").write_text("import mlflow\nfrom models import ok\n")
    (tmp_path / "flows" / "ok.py").write_text("import ray.train\nfrom tasks import ok\n")
    (tmp_path / path).write_text(source)
    violations = layering_violations(tmp_path)
    assert [(str(v.path), v.imported) for v in violations] == [(path, imported)]


def test_the_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "models" / "m.py").write_text("import torch\nfrom . import n\n")
    (tmp_path / "tasks" / "t.py").write_text("import ray\nfrom models import m\n")
    assert layering_violations(tmp_path) == []

"""Package attributes loaded from their submodule on first use (PEP 562).

A package whose configs must import without torch (loading a run's config should not pay for
torch) keeps its convenient top-level names this way: `from models.generator import Generator`
imports the transformer only when that name is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], submodule_of: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: each name of `submodule_of` is imported from
    its submodule on first access and then cached in the package's `namespace`."""

    def __getattr__(name: str) -> Any:
        submodule = submodule_of.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{submodule}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(submodule_of))

    return __getattr__, __dir__

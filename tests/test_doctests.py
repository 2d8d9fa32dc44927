"""Runs every docstring example in the metaheal package (the examples are documentation)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

SKIP_PREFIXES = ("metaheal.cli", "metaheal.schemas.__main__")


# The top-level folders are mapped into the package, so walk each root explicitly.
ROOTS = ("metaheal", "metaheal.streams", "metaheal.agents", "metaheal.ledger", "metaheal.schemas")


def _modules() -> list[str]:
    names = set(ROOTS)
    for root in ROOTS:
        pkg = importlib.import_module(root)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{root}."):
            names.add(info.name)
    return sorted(n for n in names if not n.startswith(SKIP_PREFIXES) and not n.endswith("__main__"))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"

"""Every exception class metaheal defines derives from :class:`metaheal.errors.MetahealError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import metaheal
from metaheal import errors
from metaheal.errors import MetahealError

# The stage packages are installed as sub-packages of metaheal from their own folders,
# so walking ``metaheal.__path__`` alone does not reach them.
ROOTS = ("metaheal", "metaheal.agents", "metaheal.streams", "metaheal.ledger", "metaheal.schemas")


def _modules() -> list[ModuleType]:
    found: dict[str, ModuleType] = {}
    for root in ROOTS:
        pkg = importlib.import_module(root)
        found[root] = pkg
        for info in pkgutil.walk_packages(pkg.__path__, f"{root}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":  # importing runs the command
                continue
            found[info.name] = importlib.import_module(info.name)
    return list(found.values())


def _defined_exceptions() -> list[type[BaseException]]:
    return [
        obj
        for mod in _modules()
        for obj in vars(mod).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__
    ]


def test_walk_reaches_every_stage_package() -> None:
    names = {m.__name__ for m in _modules()}
    for expected in ("metaheal.ledger.keys", "metaheal.agents.meta.loop", "metaheal.streams.backtest", "metaheal.cli"):
        assert expected in names


def test_every_exception_class_derives_from_metaheal_error() -> None:
    defined = _defined_exceptions()
    assert len(defined) >= 19, "the walk should see the error tree itself"
    stray = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in defined if not issubclass(cls, MetahealError))
    assert stray == []


def test_old_import_paths_are_the_same_classes() -> None:
    from metaheal.agents.common.playbooks import PlaybookError
    from metaheal.config import ConfigError
    from metaheal.kafka import KafkaUnavailable
    from metaheal.kafka.serializers import DecodeError
    from metaheal.ledger import LedgerUnavailable
    from metaheal.ledger.keys import LedgerKeyError

    assert PlaybookError is errors.PlaybookError
    assert ConfigError is errors.ConfigError
    assert KafkaUnavailable is errors.KafkaUnavailable
    assert DecodeError is errors.DecodeError
    assert LedgerUnavailable is errors.LedgerUnavailable
    assert LedgerKeyError is errors.LedgerKeyError


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ConfigError, ValueError),
        (errors.DecodeError, ValueError),
        (errors.KafkaUnavailable, RuntimeError),
        (errors.LedgerUnavailable, RuntimeError),
        (errors.LedgerKeyError, LookupError),
        (errors.ProofError, LookupError),
        (errors.AdvisorActionForbidden, PermissionError),
    ],
)
def test_built_in_bases_kept_for_existing_handlers(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("refused")


def test_public_surface_exports_the_errors() -> None:
    for name in errors.__all__:
        assert getattr(metaheal, name) is getattr(errors, name)

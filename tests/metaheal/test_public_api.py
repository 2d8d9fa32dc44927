"""``metaheal``'s top-level names: every one in ``__all__`` resolves, and the import stays light."""

from __future__ import annotations

import subprocess
import sys

import metaheal


def test_every_public_name_resolves() -> None:
    for name in metaheal.__all__:
        assert getattr(metaheal, name) is not None, name
    assert isinstance(metaheal.__version__, str) and metaheal.__version__


def test_public_names_are_the_defining_modules_objects() -> None:
    from metaheal.config import Settings, load_settings
    from metaheal.events import EVENT_TYPES
    from metaheal.ledger import ImmutableLog
    from metaheal.producer import MetricsProducer

    assert metaheal.Settings is Settings and metaheal.load_settings is load_settings
    assert metaheal.ImmutableLog is ImmutableLog and metaheal.MetricsProducer is MetricsProducer
    assert {t.__name__ for t in EVENT_TYPES} <= set(metaheal.__all__)


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        metaheal.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("metaheal.NoSuchThing resolved")


def test_package_import_does_not_load_the_heavy_stages() -> None:
    # A fresh interpreter: the test session has long since imported everything.
    roots = "{'metaheal', 'confluent_kafka', 'pydantic'}"
    code = f"import sys, metaheal; print(sorted(m for m in sys.modules if m.split('.')[0] in {roots}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['metaheal', 'metaheal.errors']"

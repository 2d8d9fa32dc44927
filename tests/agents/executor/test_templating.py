"""Sandboxed templating: native values, strict undefined, no Python internals."""

from __future__ import annotations

import pytest

from metaheal.agents.executor.templating import TemplateError, render

CTX = {"service": {"admin_url": "http://svc:1", "dependencies": ["db"]}, "capacity": {"instances": 3}}


def test_renders_strings_and_keeps_native_types():
    out = render({"url": "{{ service.admin_url }}/x", "n": "{{ capacity.instances + 2 }}", "k": [1, "{{ 'a' }}"]}, CTX)
    assert out == {"url": "http://svc:1/x", "n": 5, "k": [1, "a"]}
    assert render("{{ service.dependencies[0] }}", CTX) == "db"


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ capacity.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "x{{ ''.__class__ }}y",
        "{{ service.admin_url.format.__globals__ }}",
    ],
)
def test_python_internals_are_refused(attack):
    with pytest.raises(TemplateError):
        render(attack, CTX)


def test_undefined_is_an_error_not_an_empty_string():
    with pytest.raises(TemplateError, match="'servcie' is undefined"):
        render("{{ servcie.admin_url }}/scale", CTX)
    with pytest.raises(TemplateError, match=r"no element 5|index"):
        render("{{ service.dependencies[5] }}", CTX)

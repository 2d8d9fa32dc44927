"""Sandboxed rendering of playbook parameters.

Playbooks are data written by people who are not necessarily the people who run
the executor, so templates must not reach Python internals: jinja2's
``SandboxedEnvironment`` refuses dunder attributes and unsafe callables, and
``StrictUndefined`` turns a misspelt variable into an error instead of an empty
string that would silently become a wrong URL.

A string that is exactly one ``{{ expression }}`` renders to the expression's
native value, so ``"{{ capacity.instances + 2 }}"`` is the integer the
``wait_for`` actuator compares with, not the text ``"5"``.

>>> render({"url": "{{ service.admin_url }}/scale", "n": "{{ cap.instances + 2 }}"},
...        {"service": {"admin_url": "http://svc"}, "cap": {"instances": 3}})
{'url': 'http://svc/scale', 'n': 5}
>>> render("{{ ''.__class__.__mro__ }}", {})
Traceback (most recent call last):
...
metaheal.errors.TemplateError: template "{{ ''.__class__.__mro__ }}" refused:
    access to attribute '__class__' of 'str' object is unsafe.
>>> render("{{ nope }}", {})
Traceback (most recent call last):
...
metaheal.errors.TemplateError: template '{{ nope }}' failed: 'nope' is undefined
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2 import TemplateError as _JinjaError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from metaheal.errors import TemplateError

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


_ENV = _environment()


def render_string(template: str, context: dict[str, Any]) -> Any:
    """Render one string; a lone ``{{ expr }}`` keeps its native type."""
    if "{{" not in template and "{%" not in template:
        return template
    try:
        match = _WHOLE_EXPRESSION.match(template)
        if match:
            fn = _ENV.compile_expression(match.group("expr"), undefined_to_none=False)
            value = fn(**context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()  # raises SecurityError or UndefinedError
            return value
        return _ENV.from_string(template).render(**context)
    except SecurityError as exc:
        raise TemplateError(f"template {template!r} refused: {exc}") from None
    except _JinjaError as exc:
        raise TemplateError(f"template {template!r} failed: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError) as exc:
        raise TemplateError(f"template {template!r} failed: {exc}") from None


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every string inside dicts and lists; other values pass through."""
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value

"""Declarative playbooks: YAML files validated into :class:`Playbook` models.

A playbook is what the executor is allowed to do to a service, so a mistake in
one must stop at load time with a message that names the file, the line and the
field (``scale.yaml:7: steps.1.timeout: Input should be greater than 0``),
never half-way through an incident. Line numbers come from the YAML node tree
(``yaml.compose``), mapped along pydantic's error location.

>>> pb = parse_playbook('''
... name: demo
... description: say hello
... applies_to: {focus_areas: [latency_drift], root_causes: [unknown]}
... impact: low
... blast_radius: 1
... prior_success: 0.5
... steps:
...   - {action: http.get, params: {url: "{{ service.admin_url }}/health"}, timeout: 5}
... verifications:
...   - {type: http_check, url: "{{ service.admin_url }}/health", expect_status: 200}
... rollback: []
... ''', source="demo.yaml")
>>> pb.name, pb.steps[0].action, pb.verifications[0].type
('demo', 'http.get', 'http_check')
>>> parse_playbook('''
... name: bad
... description: x
... applies_to: {focus_areas: [latency_drift]}
... impact: huge
... blast_radius: 1
... prior_success: 0.5
... steps: [{action: http.get, params: {}}]
... ''', source="bad.yaml")
Traceback (most recent call last):
...
metaheal.errors.PlaybookError: bad.yaml:5: impact: Input should be 'low', 'medium' or 'high' (got 'huge')
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from metaheal.errors import PlaybookError
from metaheal.events import FOCUS_AREAS

logger = logging.getLogger(__name__)

Impact = Literal["low", "medium", "high"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]
#: Impact levels in increasing order, for comparisons with guardrail limits.
IMPACT_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
#: Actions the executor knows; kept here so a typo fails at load time.
KNOWN_ACTIONS = ("http.get", "http.post", "command", "wait_for")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppliesTo(_Model):
    focus_areas: list[str] = Field(min_length=1)
    root_causes: list[str] = Field(default_factory=list)

    @field_validator("focus_areas")
    @classmethod
    def _known_focus(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FOCUS_AREAS]
        if unknown:
            raise ValueError(f"unknown focus area(s) {unknown}; expected some of {list(FOCUS_AREAS)}")
        return v


class Step(_Model):
    """One actuator call; ``params`` may hold templates rendered at plan time.

    ``idempotent: true`` declares that the target applies a repeated call carrying the
    same ``Idempotency-Key`` (``plan_id/step``) only once, so recovery may re-send a step
    whose acknowledgement was lost. Otherwise recovery never repeats it: it checks the
    step's effect on live telemetry instead.
    """

    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(30.0, gt=0)
    save_as: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    idempotent: bool = False

    @field_validator("action")
    @classmethod
    def _known_action(cls, v: str) -> str:
        if v not in KNOWN_ACTIONS:
            raise ValueError(f"unknown action {v!r}; expected one of {list(KNOWN_ACTIONS)}")
        return v


#: ``baseline``, ``baseline * 1.2``, ``baseline + 50``, ``baseline * 1.5 - 0.01``: a threshold relative to the
#: service's healthy reference of the metric (parsed, never evaluated)
_RELATIVE = re.compile(
    r"^\s*baseline\s*(?:\*\s*(?P<factor>\d+(?:\.\d+)?))?\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+(?:\.\d+)?))?\s*$"
)
RELATIVE_SYNTAX = "'baseline', 'baseline * <factor>', 'baseline + <offset>' or 'baseline * <factor> +|- <offset>'"


def relative_threshold(value: Any) -> tuple[float, float] | None:
    """``(factor, offset)`` of a threshold written against the healthy baseline; None for anything else.

    >>> relative_threshold("baseline * 1.2"), relative_threshold("baseline+50"), relative_threshold(200)
    ((1.2, 0.0), (1.0, 50.0), None)
    >>> relative_threshold("baseline * 2 - 0.5"), relative_threshold("__import__('os')")
    ((2.0, -0.5), None)
    """
    if not isinstance(value, str):
        return None
    m = _RELATIVE.match(value)
    if m is None:
        return None
    offset = float(m.group("offset") or 0.0)
    return float(m.group("factor") or 1.0), -offset if m.group("sign") == "-" else offset


class MetricThreshold(_Model):
    """Pass when live samples of ``metric`` satisfy ``op value`` within ``within`` seconds.

    ``source`` picks raw samples (``telemetry``) or a statistic (``stat``) of the
    health windows (``health``). No sample in the window is *inconclusive*.

    ``value`` is a number, a template (``"{{ ... }}"``) or a threshold relative to the service's
    healthy reference of the metric (``"baseline * 1.2"``, see :data:`RELATIVE_SYNTAX`): p95
    reference for ``stat`` p95/max where the signal has one, else the mean. Without a known
    baseline such a check is inconclusive.

    >>> MetricThreshold(type="metric_threshold", metric="latency_p95_ms", op="<=", value="baseline * 1.2").value
    'baseline * 1.2'
    >>> MetricThreshold(type="metric_threshold", metric="m", op="<=", value="baseline ** 9")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for MetricThreshold
    value
      Value error, expected a number, a template '{{ ... }}' or ...
    """

    type: Literal["metric_threshold"]
    metric: str
    op: Op
    value: float | str
    within: float = Field(60.0, gt=0)
    source: Literal["telemetry", "health"] = "telemetry"
    stat: Literal["mean", "p50", "p95", "max"] = "p95"
    min_samples: int = Field(1, ge=1)

    @field_validator("value")
    @classmethod
    def _known_value(cls, v: float | str) -> float | str:
        if isinstance(v, str) and "{{" not in v and relative_threshold(v) is None:
            try:
                float(v)
            except ValueError:
                raise ValueError(
                    f"expected a number, a template '{{{{ ... }}}}' or a threshold relative to the healthy baseline: "
                    f"{RELATIVE_SYNTAX}"
                ) from None
        return v


class HttpCheck(_Model):
    type: Literal["http_check"]
    url: str
    expect_status: int = 200
    within: float = Field(10.0, gt=0)
    timeout: float = Field(5.0, gt=0)


Verification = Annotated[MetricThreshold | HttpCheck, Field(discriminator="type")]
#: What to do with a change whose verification could not decide (no fresh samples, health endpoint
#: unreachable, telemetry reader down): ``ask`` an operator (keep or roll back; the change stays meanwhile),
#: ``keep`` it without asking, or ``rollback`` at once. Late telemetry still settles ``ask`` and ``keep``.
OnInconclusive = Literal["keep", "rollback", "ask"]


class Playbook(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    applies_to: AppliesTo
    impact: Impact
    blast_radius: int = Field(ge=0)
    prior_success: float = Field(ge=0, le=1)
    steps: list[Step] = Field(min_length=1)
    verifications: list[Verification] = Field(default_factory=list)
    rollback: list[Step] = Field(default_factory=list)
    on_inconclusive: OnInconclusive = "ask"
    #: what an unanswered verdict request ends with
    verdict_expiry: Literal["keep", "rollback"] = "keep"
    #: how long a verdict stays open (None: ``executor.verdict_expiry_seconds``)
    verdict_expiry_seconds: float | None = Field(None, gt=0)

    def applies(self, focus_area: str, root_causes: list[str] | None = None) -> bool:
        """True when the focus area matches (root causes refine ranking, they do not gate)."""
        return focus_area in self.applies_to.focus_areas

    def matches_root_cause(self, root_causes: list[str]) -> bool:
        return any(rc in self.applies_to.root_causes for rc in root_causes)


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node along ``loc`` (a pydantic error location)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if nxt is None:
                break
            key_node = next(k for k, v in node.value if v is nxt)
            line, node = key_node.start_mark.line + 1, nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format(exc: ValidationError, root: yaml.Node | None, source: str) -> str:
    lines = []
    for err in exc.errors():
        # Discriminated unions add the tag to the location; it is not a YAML key.
        loc = tuple(p for p in err["loc"] if p not in ("metric_threshold", "http_check"))
        field = ".".join(str(p) for p in loc) or "(root)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or err["type"] == "missing" else f" (got {got!r})"
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {field}: {err['msg']}{shown}")
    return "\n".join(lines)


def parse_playbook(text: str, source: str = "<string>") -> Playbook:
    """Validate one playbook document; raises :class:`PlaybookError` naming file, line and field."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PlaybookError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PlaybookError(f"{source}:1: (root): a playbook must be a mapping, got {type(data).__name__}")
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        raise PlaybookError(_format(exc, root, source)) from None


def load_playbook(path: str | Path) -> Playbook:
    p = Path(path)
    return parse_playbook(p.read_text(encoding="utf-8"), source=str(p))


def load_playbooks(folder: str | Path) -> dict[str, Playbook]:
    """Every ``*.yaml``/``*.yml`` in ``folder`` by playbook name.

    All files are checked before raising, so one run reports every broken
    playbook; duplicate names are an error too.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PlaybookError(f"{root}: playbook folder not found")
    found: dict[str, Playbook] = {}
    origin: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        try:
            pb = load_playbook(path)
        except PlaybookError as exc:
            problems.append(str(exc))
            continue
        if pb.name in found:
            problems.append(f"{path}: name: duplicate playbook {pb.name!r} (also in {origin[pb.name]})")
            continue
        found[pb.name], origin[pb.name] = pb, path
    if problems:
        raise PlaybookError("\n".join(problems))
    logger.info("playbooks_loaded folder=%s count=%d names=%s", root, len(found), ",".join(sorted(found)))
    return found

"""Settings for every metaheal component, from one YAML file plus ``METAHEAL_*`` env.

One validated model for the whole system, so that a typo in ``metaheal.yaml`` is an
error at start-up (``extra="forbid"``) rather than a default silently used in
production. Precedence, highest first: explicit keyword arguments, environment
(``METAHEAL_`` prefix, ``__`` between nested keys), the YAML file, the defaults below
(which are the design's values).

>>> s = Settings()
>>> s.cycle.cycle_seconds, s.guardrails.levels["tight"].auto_approve_confidence
(120.0, 0.95)
>>> s.topics.name("ledger")
'metaheal.ledger'
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from metaheal.errors import ConfigError

CONFIG_ENV = "METAHEAL_CONFIG"
DEFAULT_CONFIG_FILE = "metaheal.yaml"

Impact = Literal["low", "medium", "high"]
GuardrailLevel = Literal["tight", "maintain", "loose"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    """How to reach the brokers; ``client`` is passed verbatim to librdkafka."""

    bootstrap: str | None = Field(
        default=None,
        description="HOST:PORT list; None means 'start the embedded broker' where allowed.",
    )
    client: dict[str, Any] = Field(default_factory=dict)
    session_timeout_ms: int = 10_000
    replication_factor: int = 1


class TopicSettings(_Section):
    prefix: str = "metaheal."
    partitions: dict[str, int] = Field(
        default_factory=dict, description="Per-topic partition overrides, by short name."
    )

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"


class CycleSettings(_Section):
    cycle_seconds: float = Field(120.0, gt=0)
    min_cycle_gap_seconds: float = Field(15.0, ge=0)
    focus_decision_min_confidence: float = Field(0.70, ge=0, le=1)
    advice_wait_seconds: float = Field(5.0, ge=0)
    strong_anomaly_score: float = Field(0.99, ge=0, le=1)
    # meta loop (agents/meta/loop.py)
    evidence_window_seconds: float = Field(300.0, gt=0, description="how far back health/anomalies count as evidence")
    lease_seconds: float = Field(10.0, gt=0, description="leader lease on the control topic; heartbeats every third")
    stable_cycles_to_loosen: int = Field(3, ge=1, description="quiet cycles in a row before loosening one level")
    min_outcomes_for_guardrails: int = Field(
        3, ge=1, description="outcomes needed before success rates move guardrails"
    )
    learning_half_life_seconds: float = Field(3600.0, gt=0, description="recency weighting of outcomes")


class GuardrailLevelSettings(_Section):
    auto_approve_confidence: float = Field(ge=0, le=1)
    max_blast_radius: int = Field(ge=0)
    max_impact: Impact


def _default_levels() -> dict[GuardrailLevel, GuardrailLevelSettings]:
    return {
        "tight": GuardrailLevelSettings(auto_approve_confidence=0.95, max_blast_radius=1, max_impact="low"),
        "maintain": GuardrailLevelSettings(auto_approve_confidence=0.80, max_blast_radius=2, max_impact="medium"),
        "loose": GuardrailLevelSettings(auto_approve_confidence=0.65, max_blast_radius=3, max_impact="medium"),
    }


class GuardrailSettings(_Section):
    loosen_success_rate: float = Field(0.85, ge=0, le=1)
    tighten_success_rate: float = Field(0.50, ge=0, le=1)
    initial_level: GuardrailLevel = "maintain"
    levels: dict[GuardrailLevel, GuardrailLevelSettings] = Field(default_factory=_default_levels)

    @field_validator("levels", mode="before")
    @classmethod
    def _merge_level_defaults(cls, v: Any) -> Any:
        """Keys not given keep the design defaults, so one env override
        (``METAHEAL_GUARDRAILS__LEVELS__TIGHT__MAX_BLAST_RADIUS=0``) changes one value only."""
        if not isinstance(v, dict):
            return v
        merged: dict[str, Any] = {name: lv.model_dump() for name, lv in _default_levels().items()}
        for name, level in v.items():
            base = merged.get(name)
            merged[name] = {**base, **level} if isinstance(level, dict) and base is not None else level
        return merged


class MLSettings(_Section):
    ml_anomaly_weight: float = Field(0.30, ge=0, le=1)
    ml_root_cause_weight: float = Field(0.25, ge=0, le=1)
    ml_playbook_weight: float = Field(0.45, ge=0, le=1)
    ml_min_confidence: float = Field(0.65, ge=0, le=1)
    # advisors (agents/advisors/)
    knowledge_map: Path | None = Field(None, description="YAML symptoms->causes map replacing the built-in one")
    lookback_seconds: float = Field(
        300.0, gt=0, description="anomalies/health this far before a cycle are its evidence"
    )
    unknown_below: float = Field(0.35, ge=0, le=1, description="report 'unknown' when no cause is this probable")
    learned_weight_halfway: float = Field(20.0, gt=0, description="confirmed outcomes at which learned = map weight")
    prior_pseudo_count: float = Field(8.0, gt=0, description="weight of a playbook's prior_success, in outcomes")
    outcome_half_life_hours: float = Field(168.0, gt=0, description="recency decay of playbook outcomes")
    explore: bool = Field(True, description="Thompson-sample playbook scores where evidence is thin")
    seed: int = 0
    replay_hours: float = Field(24.0 * 30, gt=0, description="signed outcomes replayed from the ledger on start")


class StreamSettings(_Section):
    window_seconds: float = Field(10.0, gt=0)
    allowed_lateness_seconds: float = Field(5.0, ge=0)
    anomaly_threshold: float = Field(0.99, ge=0, le=1)
    reporting_floor: float = Field(0.9, ge=0, le=1)
    signal_map: dict[str, str] = Field(default_factory=dict, description="metric name -> signal kind overrides")
    otlp_topics: list[str] = Field(
        default_factory=lambda: ["otlp_metrics"],
        description="topics carrying OTLP ExportMetricsServiceRequest (protobuf or JSON); no prefix applied",
    )
    # streams worker (streams/app.py)
    group_id: str = Field("streams", description="consumer group / faust app id, after the topic prefix")
    seed: int = 0
    datadir: Path | None = Field(None, description="faust data folder; None = a fresh temporary folder")
    web_port: int | None = Field(None, description="faust web server port on 127.0.0.1; None = off")
    fetch_max_wait_ms: int = Field(20, ge=1, description="how long a telemetry fetch may wait for data (latency)")
    max_batch_records: int = Field(500, ge=1, description="records processed between two state writes at most")
    flush_interval_seconds: float = Field(0.2, gt=0, description="longest time between two state writes")
    checkpoint_interval_seconds: float = Field(
        120.0, ge=0, description="wall time between two model checkpoints of a series (docs/scaling.md)"
    )
    early_interval_seconds: float = Field(
        2.0,
        ge=0,
        description="event time between two provisional health windows of a service's open windows "
        "(<prefix>health-early, read by the meta loop and advisors only); 0 = off",
    )
    early_min_samples: int = Field(3, ge=1, description="samples a series needs in an open window to be shown early")
    idle_close: bool = Field(
        False,
        description="close a service's open windows once it sent nothing for window + allowed lateness (wall time)",
    )
    # bounds on input: a record outside them is a dead letter naming the field (docs/security.md)
    max_abs_value: float = Field(
        1e15, gt=0, le=1e300, description="largest |value| of a sample: keeps window statistics from overflowing"
    )
    max_future_skew_seconds: float | None = Field(
        300.0, ge=0, description="worker: event time at most this far ahead of the wall clock; None = no bound"
    )
    max_event_age_seconds: float | None = Field(
        7 * 86400.0, gt=0, description="worker: event time at most this far behind the wall clock; None = no bound"
    )
    max_series_per_service: int = Field(
        1000, ge=1, description="distinct series (metric, dependency) per service; samples of more are dead-lettered"
    )
    max_record_bytes: int = Field(
        1_048_588, ge=1024, description="largest telemetry record decoded (Kafka's default message.max.bytes)"
    )
    max_json_depth: int = Field(32, ge=4, le=500, description="deepest JSON nesting of a telemetry record")


class LedgerSettings(_Section):
    checkpoint_every_entries: int = Field(1000, gt=0)
    checkpoint_every_seconds: float = Field(60.0, gt=0)
    origin: str = "metaheal.ledger"
    append_timeout_seconds: float = Field(10.0, gt=0, description="how long an append waits for the broker's ack")
    writer_lease_seconds: float = Field(5.0, ge=0, description="one appending process at a time; 0 disables")
    lease_idle_release_seconds: float = Field(0.5, ge=0, description="give the lease back after this idle time")


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def admin_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as an admin URL, in words (None: its form is fine; hosts are checked elsewhere).

    A playbook appends its path (``{{ service.admin_url }}/restart``), so a query or fragment would
    swallow it, and userinfo would send credentials or disguise the host.

    >>> admin_url_problem("http://10.0.0.5:8080/admin") is None
    True
    >>> admin_url_problem("http://api:1/x#")
    'a fragment (#) would swallow the playbook path'
    >>> admin_url_problem("http://evil@api:1")
    'userinfo (user@) is not allowed'
    """
    if not url.startswith(("http://", "https://")):
        return f"must be an http:// or https:// URL (got {url!r})"
    if any(c in url for c in "#?"):
        return f"a {'fragment (#)' if '#' in url else 'query (?)'} would swallow the playbook path"
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        return "whitespace, control characters and backslashes are not allowed"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if "@" in parts.netloc:
        return "userinfo (user@) is not allowed"
    if not parts.hostname:
        return "no host"
    return None


class ServiceSettings(_Section):
    name: str
    admin_url: str | None = None
    dependencies: list[str] = Field(default_factory=list)
    criticality: Literal["low", "medium", "high", "critical"] = "medium"
    owner: str | None = None

    @field_validator("admin_url")
    @classmethod
    def _admin_url(cls, v: str | None) -> str | None:
        if v is not None:
            problem = admin_url_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v


class FreezeWindow(_Section):
    """No automated change between ``start`` and ``end`` (epoch seconds, UTC) for the listed services."""

    start: float
    end: float
    services: list[str] = Field(default_factory=lambda: ["*"])
    reason: str = "change freeze"


class ExecutorSettings(_Section):
    """Policies of the agentic executor (agents/); every limit applies before any action."""

    group_id: str = "metaheal-executor"
    dry_run: bool = False
    kill_switch: bool = False
    kill_switch_file: Path | None = Field(None, description="if this file exists, the kill switch is engaged")
    max_actions_per_hour: int = Field(6, ge=0)
    rate_limits: dict[str, int] = Field(default_factory=dict, description="per-service max actions/hour overrides")
    freeze_windows: list[FreezeWindow] = Field(default_factory=list)
    allow_playbooks: dict[str, list[str]] = Field(
        default_factory=dict, description="service ('*' = any) -> allowed playbooks"
    )
    deny_playbooks: dict[str, list[str]] = Field(
        default_factory=dict, description="service ('*' = any) -> denied playbooks"
    )
    approval_expiry_seconds: float = Field(900.0, gt=0)
    verdict_expiry_seconds: float = Field(
        1800.0, gt=0, description="how long a kept change waits for a verdict after an inconclusive verification"
    )
    verdict_recheck_seconds: float = Field(
        1.0, gt=0, description="while awaiting a verdict: how often late telemetry and decisions are looked at"
    )
    max_concurrent_plans: int = Field(8, gt=0)
    admin_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1", "localhost"],
        description="hosts and CIDRs an admin URL may point at (configured or registered); link-local and "
        "cloud-metadata addresses are refused even if listed",
    )

    @field_validator("admin_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for i, h in enumerate(v):
            try:
                ipaddress.ip_network(h, strict=False)
            except ValueError:
                if not _HOSTNAME.fullmatch(h):
                    raise ValueError(f"[{i}] {h!r} is neither a host name nor an IP address/CIDR") from None
        return v

    symptom_tolerance: float = Field(
        1.0,
        ge=0,
        le=4,
        description="a fix succeeds only if the symptom that triggered it is back within this fraction above its "
        "healthy baseline (1.0: at most twice it; never tighter than where the signal stops being a finding)",
    )
    symptom_lookback_seconds: float = Field(
        120.0, gt=0, description="health windows this recent tell the executor which signals showed the symptom"
    )
    max_incident_attempts: int = Field(
        3, ge=1, description="automatic plans per incident (service + focus area); further ones need an approval"
    )
    incident_window_seconds: float = Field(
        1800.0, gt=0, description="an incident with no plan for this long is over; the next directive opens a new one"
    )


class OperatorSettings(_Section):
    name: str = Field(min_length=1)
    public_key: str = Field(description="Ed25519 public key, hex")
    services: list[str] = Field(
        default_factory=lambda: ["*"], description="services this operator may approve; '*' = all"
    )

    @field_validator("public_key")
    @classmethod
    def _ed25519_hex(cls, v: str) -> str:
        """A malformed key is a config error naming the field, not a crash when a decision arrives."""
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError(f"must be a hex Ed25519 public key (64 hex digits), got {v[:80]!r}") from None
        if len(raw) != 32:
            raise ValueError(f"must be a 32-byte Ed25519 public key (64 hex digits), got {len(raw)} bytes")
        return raw.hex()


class SigningSettings(_Section):
    """Signed records on the bus (``metaheal.ledger.signing``): how far a record's signing time may be from now."""

    max_clock_skew_seconds: float = Field(
        30.0, gt=0, description="a record signed more than this ahead of the reader's clock is refused"
    )
    max_record_age_seconds: float = Field(
        900.0, gt=0, description="directives and probe commands signed longer ago than this are refused (replays)"
    )


class ObservabilitySettings(_Section):
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve /metrics, /healthz and /readyz on this port (`up`); None = off"
    )
    metrics_host: str = Field("0.0.0.0", description="address the metrics endpoints listen on")


WebhookEvent = Literal[
    "approval_requested",
    "approval_expired",
    "outcome_failed",
    "outcome_rolled_back",
    "trust_violation",
    "guardrail_changed",
]


class WebhookSettings(_Section):
    url: str = Field(description="receiver URL (a Slack or Teams incoming webhook works as is)")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(get_args(WebhookEvent)),
        description="events sent to this URL",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers; ${ENV_NAME} is replaced from the environment"
    )
    timeout_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=20, description="deliveries tried before one is counted failed")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v


class NotificationSettings(_Section):
    webhooks: list[WebhookSettings] = Field(default_factory=list)


class Settings(BaseSettings):
    """The whole configuration; see ``metaheal.yaml.example`` for every key."""

    model_config = SettingsConfigDict(
        env_prefix="METAHEAL_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    cycle: CycleSettings = Field(default_factory=CycleSettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    ml: MLSettings = Field(default_factory=MLSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    services: list[ServiceSettings] = Field(default_factory=list)
    operators: list[OperatorSettings] = Field(default_factory=list)
    playbooks: Path = Path("playbooks")
    keys: Path = Path("keys")
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)

    @field_validator("services")
    @classmethod
    def _unique_services(cls, v: list[ServiceSettings]) -> list[ServiceSettings]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate service names: {', '.join(dupes)}")
        return v

    def service(self, name: str) -> ServiceSettings | None:
        return next((s for s in self.services if s.name == name), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = settings_cls.model_config.get("yaml_file") or _config_path()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def _config_path() -> Path | None:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def _check_yaml(path: Path) -> None:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where} YAML syntax error: {problem}") from None
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (kafka, topics, ...), got a {type(doc).__name__}"
        )


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$METAHEAL_CONFIG``, or ./metaheal.yaml if present).

    Raises ``FileNotFoundError`` for a named file that does not exist,
    :class:`ConfigError` for a YAML syntax error or a top level that is not a mapping,
    and ``pydantic.ValidationError`` (with field paths) for invalid content.
    """
    if path is None:
        return Settings(**overrides)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    _check_yaml(p)
    # A subclass carries the file name, so no module-level state is needed.
    bound = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": p}})
    return bound(**overrides)

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

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

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


class GuardrailLevelSettings(_Section):
    auto_approve_confidence: float = Field(ge=0, le=1)
    max_blast_radius: int = Field(ge=0)
    max_impact: Impact


def _default_levels() -> dict[str, GuardrailLevelSettings]:
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


class MLSettings(_Section):
    ml_anomaly_weight: float = Field(0.30, ge=0, le=1)
    ml_root_cause_weight: float = Field(0.25, ge=0, le=1)
    ml_playbook_weight: float = Field(0.45, ge=0, le=1)
    ml_min_confidence: float = Field(0.65, ge=0, le=1)


class StreamSettings(_Section):
    window_seconds: float = Field(10.0, gt=0)
    allowed_lateness_seconds: float = Field(5.0, ge=0)
    anomaly_threshold: float = Field(0.99, ge=0, le=1)
    reporting_floor: float = Field(0.9, ge=0, le=1)
    signal_map: dict[str, str] = Field(default_factory=dict, description="metric name -> signal kind overrides")


class LedgerSettings(_Section):
    checkpoint_every_entries: int = Field(1000, gt=0)
    checkpoint_every_seconds: float = Field(60.0, gt=0)
    origin: str = "metaheal.ledger"


class ServiceSettings(_Section):
    name: str
    admin_url: str | None = None
    dependencies: list[str] = Field(default_factory=list)
    criticality: Literal["low", "medium", "high", "critical"] = "medium"
    owner: str | None = None


class OperatorSettings(_Section):
    name: str
    public_key: str = Field(description="Ed25519 public key, hex")
    services: list[str] = Field(default_factory=lambda: ["*"], description="services this operator may approve; '*' = all")


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


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$METAHEAL_CONFIG``, or ./metaheal.yaml if present).

    Raises ``FileNotFoundError`` for a named file that does not exist and
    ``pydantic.ValidationError`` (with field paths) for invalid content.
    """
    if path is None:
        return Settings(**overrides)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    # A subclass carries the file name, so no module-level state is needed.
    bound = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": p}})
    return bound(**overrides)

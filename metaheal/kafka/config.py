"""librdkafka configuration derived from settings.

>>> from metaheal.config import KafkaSettings
>>> client_config(KafkaSettings(bootstrap="127.0.0.1:9092"))["bootstrap.servers"]
'127.0.0.1:9092'
>>> consumer_config(KafkaSettings(bootstrap="b:1", session_timeout_ms=6000), "g")["session.timeout.ms"]
6000

``kafka.client`` is librdkafka's configuration, passed verbatim to every confluent-kafka
client. The streams worker's client is aiokafka (under faust), which names the same
security settings differently: :func:`aiokafka_security` maps them, so one
``kafka.client`` section secures every client.

>>> sec = aiokafka_security(KafkaSettings(bootstrap="b:9093", client={
...     "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
...     "sasl.username": "metaheal", "sasl.password": "s3cret"}))
>>> sec["security_protocol"], sec["sasl_mechanism"], sec["sasl_plain_username"]
('SASL_PLAINTEXT', 'SCRAM-SHA-512', 'metaheal')
>>> aiokafka_security(KafkaSettings(bootstrap="b:1", client={"sasl.oauthbearer.config": "x"}))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
metaheal.errors.ConfigError: kafka.client.sasl.oauthbearer.config: not supported by the streams worker's ...
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from metaheal.config import KafkaSettings
from metaheal.errors import ConfigError
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.observability import LIBRDKAFKA_LOGGER

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms aiokafka can use from configuration alone (OAUTHBEARER needs a token callback)
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")
SECURITY_KEYS = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "sasl.kerberos.service.name",
        "ssl.ca.location",
        "ssl.ca.pem",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "enable.ssl.certificate.verification",
        "ssl.endpoint.identification.algorithm",
    }
)


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    if not settings.bootstrap:
        raise KafkaUnavailable("no Kafka bootstrap given (use --bootstrap or METAHEAL_KAFKA__BOOTSTRAP)")
    # librdkafka's own log lines go through Python logging (metaheal.observability filters them)
    return {"bootstrap.servers": settings.bootstrap, "logger": LIBRDKAFKA_LOGGER, **settings.client}


def producer_config(settings: KafkaSettings, *, idempotent: bool = False) -> dict[str, Any]:
    cfg = client_config(settings)
    cfg.setdefault("linger.ms", 5)
    if idempotent:
        cfg.update({"enable.idempotence": True, "acks": "all"})
    return cfg


def consumer_config(
    settings: KafkaSettings,
    group_id: str | None,
    *,
    auto_offset_reset: str = "earliest",
    enable_auto_commit: bool = False,
) -> dict[str, Any]:
    """Consumer settings; ``group_id=None`` gives a group-less reader for ``assign``.

    ``enable.partition.eof`` is always on: tansu's ListOffsets high watermarks are
    unreliable, so "caught up" is decided by the EOF event, never by watermarks.
    """
    cfg = client_config(settings)
    cfg.update(
        {
            "group.id": group_id or "metaheal-reader",
            "auto.offset.reset": auto_offset_reset,
            "enable.auto.commit": enable_auto_commit,
            "enable.partition.eof": True,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
        }
    )
    return cfg


def _flag(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"kafka.client.{key}: expected true or false, got {value!r}")


def ssl_context(client: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context librdkafka would use for ``client`` (CA, client certificate, verification)."""
    ca = client.get("ssl.ca.location")
    if ca is not None and not os.path.exists(ca):
        raise ConfigError(f"kafka.client.ssl.ca.location: {ca} does not exist")
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=ca if ca is not None and not os.path.isdir(ca) else None,
            capath=ca if ca is not None and os.path.isdir(ca) else None,
            cadata=client.get("ssl.ca.pem"),
        )
        cert, key = client.get("ssl.certificate.location"), client.get("ssl.key.location")
        if cert is not None:
            ctx.load_cert_chain(cert, key, client.get("ssl.key.password"))
        elif key is not None:
            raise ConfigError("kafka.client.ssl.key.location: given without ssl.certificate.location")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka.client: cannot build the TLS context: {exc}") from None
    algorithm = str(client.get("ssl.endpoint.identification.algorithm", "https")).lower()
    if algorithm not in ("https", "none"):
        raise ConfigError(f"kafka.client.ssl.endpoint.identification.algorithm: https or none, got {algorithm!r}")
    if algorithm == "none":
        ctx.check_hostname = False
    if not _flag("enable.ssl.certificate.verification", client.get("enable.ssl.certificate.verification", True)):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def aiokafka_security(settings: KafkaSettings) -> dict[str, Any]:
    """``kafka.client``'s security settings as aiokafka keyword arguments (``security_protocol``, ``sasl_*``,
    ``ssl_context``); a security setting aiokafka cannot honour is a :class:`ConfigError` naming it, never ignored.

    Non-security keys (``linger.ms``, ``client.id``, ...) tune librdkafka only and are left out.
    """
    client = dict(settings.client)
    unknown = sorted(k for k in client if k.startswith(("ssl.", "sasl.", "ssl_")) and k not in SECURITY_KEYS)
    if unknown:
        raise ConfigError(
            f"kafka.client.{unknown[0]}: not supported by the streams worker's Kafka client (aiokafka); "
            f"supported security settings: {', '.join(sorted(SECURITY_KEYS))}"
        )
    protocol = str(client.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"kafka.client.security.protocol: one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl_context(client)
    if protocol.startswith("SASL_"):
        mechanism = str(client.get("sasl.mechanism", client.get("sasl.mechanisms", "GSSAPI"))).upper()
        if mechanism not in MECHANISMS:
            raise ConfigError(f"kafka.client.sasl.mechanism: one of {', '.join(MECHANISMS)}, got {mechanism!r}")
        out["sasl_mechanism"] = mechanism
        if mechanism == "GSSAPI":
            out["sasl_kerberos_service_name"] = client.get("sasl.kerberos.service.name", "kafka")
        else:
            for key in ("sasl.username", "sasl.password"):
                if not client.get(key):
                    raise ConfigError(f"kafka.client.{key}: required for sasl.mechanism {mechanism}")
            out["sasl_plain_username"] = client["sasl.username"]
            out["sasl_plain_password"] = client["sasl.password"]
    return out

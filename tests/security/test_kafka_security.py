"""``kafka.client`` (librdkafka's SASL/TLS settings) reaches every client, the streams worker's aiokafka too.

The embedded broker has no authentication, so the worker's side is checked on the mapping (what faust
hands to aiokafka), and the librdkafka side by behaviour: a client told to speak TLS to the plaintext
broker cannot get metadata, the same client without it can.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from metaheal.config import KafkaSettings, Settings
from metaheal.errors import ConfigError
from metaheal.kafka import (
    Admin,
    Consumer,
    KafkaUnavailable,
    PartitionReader,
    Producer,
    TopicSpec,
    aiokafka_security,
)
from metaheal.runtime import write_settings
from metaheal.streams.app import create_app, faust_security
from metaheal.streams.worker import worker_env


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA and a client certificate/key (openssl), as a secured cluster would hand out."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca"),
        *("-keyout", "ca.key", "-out", "ca.pem"),
    )
    run(*("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=metaheal"), *("-keyout", "client.key", "-out", "c.csr"))
    run(
        *("x509", "-req", "-in", "c.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"),
        *("-out", "client.pem"),
    )
    return {"ca": str(d / "ca.pem"), "cert": str(d / "client.pem"), "key": str(d / "client.key")}


def secured(pki: dict[str, str], protocol: str = "SASL_SSL", **extra: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap="broker.example:9093",
        client={
            "security.protocol": protocol,
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "metaheal-streams",
            "sasl.password": "s3cret",
            "ssl.ca.location": pki["ca"],
            "ssl.certificate.location": pki["cert"],
            "ssl.key.location": pki["key"],
            "linger.ms": 5,  # librdkafka tuning: not a security setting, not for aiokafka
            **extra,
        },
    )


def test_sasl_ssl_reaches_the_faust_app_and_its_aiokafka_clients(pki: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(kafka=secured(pki))
    app, _pipeline = create_app(settings, datadir=tmp_path, sink=object())
    creds = app.conf.broker_credentials
    assert isinstance(creds, SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("metaheal-streams", "s3cret", "SCRAM-SHA-512")
    # what faust passes to every AIOKafkaConsumer / AIOKafkaProducer it creates
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("metaheal-streams", "s3cret")
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test-ca"),),)]


def test_each_protocol_maps(pki: dict[str, str]) -> None:
    ssl_only = aiokafka_security(secured(pki, "SSL"))
    assert ssl_only["security_protocol"] == "SSL" and "sasl_mechanism" not in ssl_only
    creds = faust_security(secured(pki, "SSL"))["broker_credentials"]
    assert isinstance(creds, SSLCredentials) and creds.context.verify_mode == ssl.CERT_REQUIRED

    plain = aiokafka_security(secured(pki, "sasl_plaintext", **{"sasl.mechanism": "PLAIN"}))
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and plain["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in plain

    unverified = aiokafka_security(secured(pki, "SSL", **{"enable.ssl.certificate.verification": "false"}))[
        "ssl_context"
    ]
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
    no_hostname = aiokafka_security(secured(pki, "SSL", **{"ssl.endpoint.identification.algorithm": "none"}))
    assert not no_hostname["ssl_context"].check_hostname

    assert aiokafka_security(KafkaSettings(bootstrap="b:1")) == {"security_protocol": "PLAINTEXT"}
    assert faust_security(KafkaSettings(bootstrap="b:1")) == {}


@pytest.mark.parametrize(
    ("client", "needle"),
    [
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "kafka.client.sasl.mechanism"),
        ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}, "kafka.client.sasl.username"),
        ({"security.protocol": "TLS"}, "kafka.client.security.protocol"),
        ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "kafka.client.ssl.ca.location"),
        ({"ssl.keystore.location": "/k.p12"}, "kafka.client.ssl.keystore.location"),
    ],
)
def test_a_security_setting_the_worker_cannot_honour_is_an_error_naming_it(
    client: dict[str, str], needle: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        create_app(Settings(kafka=KafkaSettings(bootstrap="b:1", client=client)), datadir=tmp_path, sink=object())


def test_spawned_workers_and_runtime_children_get_the_settings(pki: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(kafka=secured(pki))
    env = worker_env(settings)
    assert '"sasl.password": "s3cret"' in env["METAHEAL_KAFKA__CLIENT"]
    path = write_settings(settings, tmp_path / "child.yaml")
    assert "s3cret" in path.read_text()
    assert os.stat(path).st_mode & 0o077 == 0, "a settings file holding the SASL password is readable by others"


def test_librdkafka_clients_use_kafka_client(kafka_settings: KafkaSettings) -> None:
    """TLS against the plaintext embedded broker fails in every client; the same client without it works."""
    tls = kafka_settings.model_copy(update={"client": {"security.protocol": "SSL"}})
    Admin(kafka_settings).wait_ready(5)
    with pytest.raises(KafkaUnavailable):
        Admin(tls, timeout=3).wait_ready(3)
    topic = "t-security-probe"
    Admin(kafka_settings).ensure([TopicSpec(topic)])
    with Consumer(kafka_settings) as c:
        assert c.partitions(topic, timeout=5) == [0]
    with Consumer(tls) as c, pytest.raises(KafkaUnavailable):
        c.partitions(topic, timeout=3)
    reader = PartitionReader(tls)
    try:
        with pytest.raises(KafkaUnavailable):
            reader.partitions(topic, timeout=3)
    finally:
        reader.close()
    p = Producer(tls, **{"message.timeout.ms": 2000})
    p.produce(topic, b"x")
    with pytest.raises(KafkaUnavailable):
        p.flush(5)

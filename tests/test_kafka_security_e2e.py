"""kafka.security_protocol and its companions, on both clients, against a real broker with
an SSL listener that requires a client certificate and a SASL_SSL listener with
SCRAM-SHA-512. The certificates come from openssl into a temp dir; the tests read the
records back through the broker's PLAINTEXT listener."""

from __future__ import annotations

import re

import pytest

from conftest import CLIENTS
from harness import (SCRAM_NOBODY, SCRAM_PASSWORD, SCRAM_USER, Certificates, SecureKafka,
                     TopicReader, logship, numbered, numbers)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory, certificates):
    service = SecureKafka(tmp_path_factory.mktemp("secure-kafka") / "data", certificates)
    service.start()
    yield service
    service.stop()


def ssl_with_client_certificate(kafka: SecureKafka, certs: Certificates) -> dict:
    return {"bootstrap_servers": [f"127.0.0.1:{kafka.ssl_port}"], "security_protocol": "SSL",
            "ssl_cafile": str(certs.ca), "ssl_certfile": str(certs.client_cert),
            "ssl_keyfile": str(certs.client_key)}


def sasl_ssl_scram(kafka: SecureKafka, certs: Certificates) -> dict:
    return {"bootstrap_servers": [f"127.0.0.1:{kafka.sasl_port}"], "security_protocol": "SASL_SSL",
            "ssl_cafile": str(certs.ca), "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": SCRAM_USER, "sasl_password": SCRAM_PASSWORD}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("listener", [ssl_with_client_certificate, sasl_ssl_scram])
def test_both_clients_ship_over_tls_and_sasl(etcd, secure_kafka, certificates, make_agent, key,
                                             topic, tmp_path, client, listener):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic}])
    kafka_section = {**listener(secure_kafka, certificates), "client": client}
    agent = make_agent(etcd, secure_kafka, [key], kafka=kafka_section).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"".join(b"secure %d\n" % i for i in range(100)))
    reader = TopicReader(secure_kafka, topic)
    try:
        records = reader.wait_count(100, timeout=60)
    finally:
        reader.close()
    assert sorted(r.value for r in records) == sorted(b"secure %d" % i for i in range(100))
    assert SCRAM_PASSWORD not in agent.log()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_sasl_password_from_a_file_ships_and_never_shows(etcd, secure_kafka, certificates,
                                                          make_agent, key, topic, tmp_path, client):
    (tmp_path / "sasl.pw").write_text(SCRAM_PASSWORD + "\n")
    kafka_section = {**sasl_ssl_scram(secure_kafka, certificates), "client": client,
                     "sasl_password_file": "sasl.pw"}
    del kafka_section["sasl_password"]
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic}])
    agent = make_agent(etcd, secure_kafka, [key], kafka=kafka_section)
    check = logship("check", "--connect", "--config", agent.config_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"kafka 127.0.0.1:{secure_kafka.sasl_port} ({client}): ok" in check.stdout.decode()
    agent.start().wait_log(f"worker started path={log}")
    log.write_bytes(b"via a password file\n")
    reader = TopicReader(secure_kafka, topic)
    try:
        assert [r.value for r in reader.wait_count(1, timeout=60)] == [b"via a password file"]
    finally:
        reader.close()
    for text in (agent.log(), check.stdout.decode(), check.stderr.decode(),
                 agent.config_path.read_text()):
        assert SCRAM_PASSWORD not in text


def wrong_ca(kafka: SecureKafka, certs: Certificates) -> tuple[dict, str]:
    return ({**ssl_with_client_certificate(kafka, certs), "ssl_cafile": str(certs.rogue_ca)},
            f"127.0.0.1:{kafka.ssl_port}: TLS: the server's certificate is not trusted with "
            f"{certs.rogue_ca}: unable to get local issuer certificate")


def untrusted_client_certificate(kafka: SecureKafka, certs: Certificates) -> tuple[dict, str]:
    return ({**ssl_with_client_certificate(kafka, certs), "ssl_certfile": str(certs.rogue_client_cert),
             "ssl_keyfile": str(certs.rogue_client_key)},
            f"127.0.0.1:{kafka.ssl_port}: TLS: the server refused the client certificate "
            f"{certs.rogue_client_cert}")


def wrong_password(kafka: SecureKafka, certs: Certificates) -> tuple[dict, str]:
    """kafka-python often loses the broker's answer to a failed login (it reads the
    disconnect first): then the cause it can give is the disconnect, with the hint."""
    return ({**sasl_ssl_scram(kafka, certs), "sasl_password": "not-the-password"},
            f"127.0.0.1:{kafka.sasl_port}: (.*Authentication failed during authentication due "
            f"to invalid credentials with SASL mechanism SCRAM-SHA-512|the broker closed the "
            f"connection while logging in .* check kafka.sasl_username and its password)")


def user_without_rights(kafka: SecureKafka, certs: Certificates) -> tuple[dict, str]:
    return ({**sasl_ssl_scram(kafka, certs), "sasl_username": SCRAM_NOBODY},
            f"Kafka \\(127.0.0.1:{kafka.sasl_port}\\).*(Topic|Cluster) ?[aA]uthorization ?[fF]ailed")


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("broken", [wrong_ca, untrusted_client_certificate, wrong_password,
                                    user_without_rights])
def test_a_security_failure_is_one_clear_line_and_a_fixed_config_ships_everything(
        etcd, secure_kafka, certificates, make_agent, key, topic, tmp_path, client, broken):
    settings, cause = broken(secure_kafka, certificates)
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 100))
    etcd.put(key, [{"path": str(log), "topic": topic, "read_from": "beginning"}])
    agent = make_agent(etcd, secure_kafka, [key], kafka={**settings, "client": client}).start()
    agent.wait_log(re.escape(cause) if broken in (wrong_ca, untrusted_client_certificate)
                   else cause, timeout=60)
    with log.open("ab") as f:
        f.write(numbered(100, 100))
    text = agent.log()
    assert "Traceback" not in text and SCRAM_PASSWORD not in text
    fixed = sasl_ssl_scram(secure_kafka, certificates)
    agent.write_config({**agent.config, "kafka": {**fixed, "client": client}})
    agent.wait_log("kafka settings changed: producer rebuilt")
    reader = TopicReader(secure_kafka, topic)
    try:
        records = reader.wait_count(200, timeout=60)
    finally:
        reader.close()
    assert sorted(set(numbers(records))) == list(range(200))

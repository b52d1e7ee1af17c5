"""kafka.security_protocol and its companions, on both clients, against a real broker with
an SSL listener that requires a client certificate and a SASL_SSL listener with
SCRAM-SHA-512. The certificates come from openssl into a temp dir; the tests read the
records back through the broker's PLAINTEXT listener."""

from __future__ import annotations

import re

import pytest
import yaml
from kafka.admin import ACLOperation, ResourceType

from conftest import CLIENTS
from harness import (ETCD_USER, SCRAM_LIMITED, SCRAM_NOBODY, SCRAM_PASSWORD, SCRAM_USER,
                     Certificates, SecureEtcd, SecureKafka, TopicReader, logship, numbered,
                     numbers, unique)
from test_exactly_once_e2e import every_line_once

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


BAD_PASSWORD = "not-the-password-0815"


@pytest.fixture(scope="module")
def etcd_with_users(tmp_path_factory, certificates):
    service = SecureEtcd(tmp_path_factory.mktemp("secure-etcd") / "data", certificates,
                         client_certificates=False, auth=True)
    service.start()
    yield service
    service.stop()


@pytest.mark.parametrize("client", CLIENTS)
def test_check_connect_with_wrong_passwords_ends_and_names_each_refusal(
        secure_kafka, etcd_with_users, certificates, tmp_path, client):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "etcd": {**etcd_with_users.settings(ETCD_USER), "password": BAD_PASSWORD, "keys": ["k"]},
        "kafka": {**sasl_ssl_scram(secure_kafka, certificates), "sasl_password": BAD_PASSWORD,
                  "client": client}}))
    for _ in range(3):
        # logship()'s own timeout is the hang detector; the bound is the check's.
        result = logship("check", "--connect", "--timeout", "3", "--config", config)
        lines = result.stdout.decode().splitlines()
        assert result.returncode == 1, lines
        assert lines[2].startswith(f"etcd 127.0.0.1:{etcd_with_users.port}: FAILED: ")
        assert "authentication failed" in lines[2], lines[2]
        assert lines[3].startswith(f"kafka 127.0.0.1:{secure_kafka.sasl_port} ({client}): "
                                   f"FAILED: "), lines[3]
        assert re.search("authentication failed|a refused SASL login is the usual cause, check "
                         "kafka.sasl_username and its password", lines[3], re.I), lines[3]
        assert BAD_PASSWORD not in result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize("client", CLIENTS)
def test_exactly_once_without_create_on_the_offsets_topic_names_the_right_and_resumes_once_granted(
        etcd, secure_kafka, certificates, make_agent, key, topic, tmp_path, client):
    """The rights docs/delivery.md lists for exactly-once, all but Create on the offsets
    topic: the agent says which right is missing on which topic, and once the right is
    granted creates the topic and ships every line once."""
    name, offsets = unique("acl"), unique("offsets")
    secure_kafka.create_topic(topic)        # a user without Create has none made for it
    topic_rights = [(ResourceType.TOPIC, topic, ACLOperation.WRITE)]
    transactional_rights = [(ResourceType.TRANSACTIONAL_ID, f"logship-{name}", operation)
                            for operation in (ACLOperation.WRITE, ACLOperation.DESCRIBE)]
    offsets_rights = [(ResourceType.TOPIC, offsets, operation)
                      for operation in (ACLOperation.READ, ACLOperation.WRITE,
                                        ACLOperation.DESCRIBE)]
    secure_kafka.grant(*topic_rights, *transactional_rights, *offsets_rights)
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 1000))
    etcd.put(key, [{"path": str(log), "topic": topic, "read_from": "beginning"}])
    kafka_section = {**sasl_ssl_scram(secure_kafka, certificates), "client": client,
                     "sasl_username": SCRAM_LIMITED, "delivery": "exactly-once",
                     "offsets_topic": offsets}
    agent = make_agent(etcd, secure_kafka, [key], kafka=kafka_section,
                       agent={"name": name}).start()
    agent.wait_log(rf"exactly-once: cannot resume from the positions in Kafka: "
                   rf"kafka.offsets_topic {offsets}: missing, and Kafka did not create it "
                   rf"\(.+\): grant the agent's principal Create on the topic", timeout=60)
    secure_kafka.grant((ResourceType.TOPIC, offsets, ACLOperation.CREATE))
    committed = TopicReader(secure_kafka, topic, committed=True)
    try:
        every_line_once("exactly-once after a granted Create", committed, 1000)
    finally:
        committed.close()
    assert "Traceback" not in agent.log()

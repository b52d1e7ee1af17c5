"""etcd over TLS, with a client certificate and with user/password auth, against real etcd
servers that the tests start (certificates from openssl, users and roles from etcdctl).
A broken security setting is one clear log line naming the endpoint and the cause; the
agent keeps retrying, and a fixed config.yaml ships everything."""

from __future__ import annotations

import json

import pytest
import yaml

from harness import (ETCD_KEY_PREFIX, ETCD_NOBODY, ETCD_PASSWORD, ETCD_ROOT_PASSWORD,
                     ETCD_STATUS_PREFIX, ETCD_USER, SecureEtcd, logship, numbered, numbers,
                     unique, wait_until)

pytestmark = pytest.mark.e2e


def secure_etcd(tmp_path_factory, certificates, **mode):
    service = SecureEtcd(tmp_path_factory.mktemp("secure-etcd") / "data", certificates, **mode)
    service.start()
    return service


@pytest.fixture(scope="module")
def etcd_with_client_certificates(tmp_path_factory, certificates):
    service = secure_etcd(tmp_path_factory, certificates, client_certificates=True, auth=False)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def etcd_with_users(tmp_path_factory, certificates):
    """TLS with only a CA on the client side, and user/password authentication."""
    service = secure_etcd(tmp_path_factory, certificates, client_certificates=False, auth=True)
    yield service
    service.stop()


@pytest.fixture
def secure_key():
    return ETCD_KEY_PREFIX + unique("key")


def ship_one_file(etcd: SecureEtcd, agent_etcd: dict, kafka, make_agent, reader, key, topic,
                  tmp_path):
    """An agent whose etcd section is `agent_etcd` follows the file the key names, and
    its status document reaches etcd (read back by `logship status`)."""
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 50))
    etcd.put(key, [{"path": str(log), "topic": topic, "read_from": "beginning"}])
    name = unique("agent")
    agent = make_agent(etcd, kafka, [key], etcd={**agent_etcd, "keys": [key]},
                       agent={"name": name},
                       status={"prefix": ETCD_STATUS_PREFIX, "ttl": 5, "interval": 0.5,
                               "progress_interval": 1}).start()
    agent.wait_log(f"key={key} watching on 127.0.0.1:{etcd.port}")
    assert sorted(numbers(reader(topic).wait_count(50))) == list(range(50))
    agent.wait_log(f"status {ETCD_STATUS_PREFIX}{name} written")

    def shown():
        """The first document may be written before the worker started: no files yet."""
        status = logship("status", "--json", "--config", agent.config_path, name)
        files = json.loads(status.stdout)[0]["files"] if status.returncode == 0 else []
        return files and files[0]["records_sent"]
    wait_until(shown, 15, "the agent's status through `logship status`")
    assert ETCD_PASSWORD not in agent.scrape("/api/status")
    return agent


def test_managers_put_and_get_over_tls_with_a_client_certificate(
        etcd_with_client_certificates, kafka, make_agent, reader, secure_key, topic, tmp_path):
    etcd = etcd_with_client_certificates
    agent = ship_one_file(etcd, etcd.settings(), kafka, make_agent, reader, secure_key, topic,
                          tmp_path)
    second = tmp_path / "second.log"
    second.write_bytes(b"")
    value = tmp_path / "value.json"
    value.write_text(json.dumps([{"path": str(second), "topic": topic}]))
    put = logship("put", "--config", agent.config_path, secure_key, value)
    assert put.returncode == 0, put.stderr
    agent.wait_log(f"worker started path={second}")
    got = logship("get", "--config", agent.config_path, secure_key)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == [{"path": str(second), "topic": topic}]


def test_a_read_only_user_over_tls_with_only_a_ca_reads_its_keys(
        etcd_with_users, kafka, make_agent, reader, secure_key, topic, tmp_path):
    etcd = etcd_with_users
    (tmp_path / "etcd.pw").write_text(ETCD_PASSWORD + "\n")
    settings = {**etcd.settings(ETCD_USER), "password_file": "etcd.pw"}
    del settings["password"]
    agent = ship_one_file(etcd, settings, kafka, make_agent, reader, secure_key, topic, tmp_path)
    got = logship("get", "--config", agent.config_path, secure_key)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["topic"] == topic
    value = tmp_path / "value.json"
    value.write_text("[]")
    put = logship("put", "--config", agent.config_path, secure_key, value)
    assert put.returncode == 1
    assert put.stderr.decode() == (f"logship: error: etcd 127.0.0.1:{etcd.port}: "
                                   f"PERMISSION_DENIED: etcdserver: permission denied\n")
    admin = tmp_path / "admin.yaml"
    admin.write_text(yaml.safe_dump({**agent.config, "etcd": {**etcd.settings("root"),
                                                              "keys": [secure_key]}}))
    admin.chmod(0o600)
    put = logship("put", "--config", admin, secure_key, value)
    assert put.returncode == 0, put.stderr
    agent.wait_log(f"key={secure_key} applied 0 entries")
    for text in (agent.log(), got.stdout.decode(), got.stderr.decode(), put.stderr.decode()):
        assert ETCD_PASSWORD not in text


def wrong_ca(etcd: SecureEtcd) -> tuple[dict, str]:
    return ({**etcd.settings(), "ca_cert": str(etcd.certs.rogue_ca)},
            f"TLS: the server's certificate is not trusted with {etcd.certs.rogue_ca}: "
            f"unable to get local issuer certificate")


def untrusted_client_certificate(etcd: SecureEtcd) -> tuple[dict, str]:
    return ({**etcd.settings(), "cert_cert": str(etcd.certs.rogue_client_cert),
             "cert_key": str(etcd.certs.rogue_client_key)},
            f"TLS: the server refused the client certificate {etcd.certs.rogue_client_cert}")


def wrong_password(etcd: SecureEtcd) -> tuple[dict, str]:
    return ({**etcd.settings(ETCD_USER), "password": "not-the-password"},
            "INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password")


def user_without_rights(etcd: SecureEtcd) -> tuple[dict, str]:
    return ({**etcd.settings(ETCD_NOBODY)}, "PERMISSION_DENIED: etcdserver: permission denied")


@pytest.mark.parametrize("server, broken", [
    ("etcd_with_client_certificates", wrong_ca),
    ("etcd_with_client_certificates", untrusted_client_certificate),
    ("etcd_with_users", wrong_password),
    ("etcd_with_users", user_without_rights),
])
def test_a_security_failure_is_one_clear_line_and_a_fixed_config_ships_everything(
        request, kafka, make_agent, reader, secure_key, topic, tmp_path, server, broken):
    etcd: SecureEtcd = request.getfixturevalue(server)
    settings, cause = broken(etcd)
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 100))
    etcd.put(secure_key, [{"path": str(log), "topic": topic, "read_from": "beginning"}])
    agent = make_agent(etcd, kafka, [secure_key], etcd={**settings, "keys": [secure_key]})
    agent.start().wait_log(f"key={secure_key} etcd: .*127.0.0.1:{etcd.port}: .*retrying in",
                           count=2)
    text = agent.log()
    assert f"127.0.0.1:{etcd.port}: {cause}" in text
    assert "Traceback" not in text and ETCD_PASSWORD not in text
    assert ETCD_ROOT_PASSWORD not in text
    with log.open("ab") as f:
        f.write(numbered(100, 100))
    agent.write_config({**agent.config, "etcd": {**etcd.settings(), "keys": [secure_key]}})
    agent.wait_log("config reloaded from")
    agent.wait_log(f"key={secure_key} watching on 127.0.0.1:{etcd.port}")
    records = reader(topic).wait_count(200)
    assert sorted(set(numbers(records))) == list(range(200))


def test_check_connect_says_when_the_server_wants_tls(etcd_with_client_certificates, kafka,
                                                     tmp_path):
    etcd = etcd_with_client_certificates
    config = tmp_path / "config.yaml"
    for settings, answer in [
            (etcd.settings(), f"etcd 127.0.0.1:{etcd.port}: ok, etcd 3."),
            ({"endpoints": [etcd.address]},
             f"etcd 127.0.0.1:{etcd.port}: FAILED: no etcd endpoint answered (127.0.0.1:"
             f"{etcd.port}: the server speaks TLS: set etcd.ca_cert (and https:// in "
             f"etcd.endpoints))")]:
        config.write_text(yaml.safe_dump({"etcd": {**settings, "keys": ["k"]},
                                          "kafka": {"bootstrap_servers": [kafka.address]}}))
        result = logship("check", "--connect", "--config", config)
        assert answer in result.stdout.decode(), result.stdout + result.stderr

"""config.yaml validation (pure logic)."""

from pathlib import Path

import pytest
import yaml

from logship.config import DEFAULT_ALLOWED_PATHS, load_config, parse_config
from logship.errors import ConfigError
from logship.clients import check_settings
from logship.spec import Target

BASE = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}


def with_(**sections):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    data.update(sections)
    return data


def test_minimal_config_gets_defaults():
    config = parse_config(with_(), Path("/etc/logship"))
    assert config.etcd.endpoints == (("127.0.0.1", 2379),)
    assert config.allowed_paths == DEFAULT_ALLOWED_PATHS
    assert config.state_dir == Path("/etc/logship/state")
    assert config.metrics_listen is None
    assert config.kafka.producer == ()


@pytest.mark.parametrize("data, message", [
    ({"kafka": BASE["kafka"]}, "etcd.endpoints: required"),
    (with_(etcd={"endpoints": "127.0.0.1:2379", "keys": ["k"]}), "etcd.endpoints: must be a non-empty list"),
    (with_(etcd={"endpoints": ["127.0.0.1:2379"], "keys": [""]}), "etcd.keys[0]: must be a non-empty string"),
    (with_(etcd={"endpoints": ["127.0.0.1:2379"], "keys": ["k"], "timeout": -1}), "etcd.timeout"),
    (with_(kafka={"bootstrap_servers": []}), "kafka.bootstrap_servers: must be a non-empty list"),
    (with_(kafka={"bootstrap_servers": ["x:1"], "api_version": "two"}), "kafka.api_version"),
    (with_(files={"max_line_bytes": "big"}), "files.max_line_bytes: must be an integer"),
    (with_(logs=[{"path": "/var/log/a", "topic": "t", "x": 1}]), "logs[0]: unknown field 'x'"),
    (with_(logs=[{"path": "/srv/a", "topic": "t"}]), "logs[0]: path: /srv/a"),
    (with_(allowed_paths=["relative/**"]), "allowed_paths[0]: must be an absolute glob"),
    (with_(metrics={"listen": "9108"}), "metrics.listen: must be host:port"),
    (with_(metrics=[1]), "metrics: must be a mapping"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("/"))
    assert message in str(error.value)


def test_unknown_settings_warn_or_fail(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("etcd: {endpoints: ['a:1'], keys: [k], colour: red}\n"
                    "kafka: {bootstrap_servers: ['b:2']}\nlogs: [{path: /var/log/x, topic: x}]\n")
    config = load_config(path)
    assert config.warnings == ("etcd.colour: unknown setting",)
    assert config.logs == (Target("/var/log/x", "x"),)
    with pytest.raises(ConfigError, match="etcd.colour: unknown setting"):
        load_config(path, strict=True)


def test_a_misspelt_setting_is_told_what_was_meant(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("etcd: {endpoints: ['a:1'], keys: [k], timout: 2}\n"
                    "kafka: {bootstrap_servers: ['b:2']}\nallowed_path: ['/srv/**']\n")
    assert load_config(path).warnings == (
        "allowed_path: unknown setting; did you mean allowed_paths?",
        "etcd.timout: unknown setting; did you mean etcd.timeout?")


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}/missing.yaml: no such file; run from "
                       "the folder that holds config.yaml, or name it with --config PATH"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="etcd.endpoints: required"):
        load_config(empty)


@pytest.mark.parametrize("client, producer, message", [
    ("kafka-python", {"linger": 5}, "kafka.producer.linger: not a kafka-python producer setting"),
    ("kafka-python", {"acks": 1}, "kafka.producer.acks: managed by logship"),
    ("kafka-python", {"compression_type": "gzip"}, "set kafka.compression"),
    ("confluent-kafka", {"bogus.setting": 1}, "kafka.producer: No such configuration property"),
    ("confluent-kafka", {"linger.ms": "soon"}, "kafka.producer: Invalid value"),
    ("confluent-kafka", {"enable.idempotence": False}, "managed by logship"),
])
def test_producer_settings_are_judged_by_the_chosen_client(client, producer, message):
    config = parse_config(with_(kafka={"bootstrap_servers": ["x:1"], "client": client,
                                       "producer": producer}), Path("/"))
    with pytest.raises(ConfigError, match=message):
        check_settings(config.kafka)


def test_client_and_compression_are_checked():
    for field, value in (("client", "librdkafka"), ("compression", "brotli")):
        with pytest.raises(ConfigError, match=f"kafka.{field}: must be one of"):
            parse_config(with_(kafka={"bootstrap_servers": ["x:1"], field: value}), Path("/"))


def kafka_with(**settings):
    return with_(kafka={"bootstrap_servers": ["x:1"], **settings})


@pytest.mark.parametrize("settings, message", [
    ({"security_protocol": "TLS"}, "kafka.security_protocol: must be one of PLAINTEXT, SSL"),
    ({"ssl_cafile": "{ca}"}, "kafka.ssl_cafile: needs kafka.security_protocol SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "kafka.ssl_cafile: cannot read /nonexistent/ca.pem: No such file"),
    ({"security_protocol": "SSL", "ssl_certfile": "{ca}"}, "a client certificate needs both"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"},
     "kafka.sasl_password: required with kafka.security_protocol SASL_SSL"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"},
     "kafka.sasl_mechanism: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"sasl_username": "u"}, "kafka.sasl_username: needs kafka.security_protocol SASL_PLAINTEXT"),
])
def test_kafka_security_settings_that_cannot_work_are_refused(tmp_path, settings, message):
    (tmp_path / "ca.pem").write_text("")
    settings = {k: v.format(ca=tmp_path / "ca.pem") for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message):
        parse_config(kafka_with(**settings), Path("/"))


def test_a_sasl_password_never_shows(tmp_path):
    config = parse_config(kafka_with(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                     sasl_username="u", sasl_password="hunter2"), Path("/"))
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as error:
        parse_config(kafka_with(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                sasl_username="u", sasl_password=["hunter2"]), Path("/"))
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize("client, name", [
    ("kafka-python", "security_protocol"), ("kafka-python", "sasl_plain_password"),
    ("confluent-kafka", "ssl.ca.location"), ("confluent-kafka", "sasl.mechanism"),
])
def test_security_settings_under_the_client_names_are_refused(client, name):
    config = parse_config(kafka_with(client=client, producer={name: "x"}), Path("/"))
    with pytest.raises(ConfigError, match=rf"kafka.producer.{name}: managed by logship; set kafka\."):
        check_settings(config.kafka)


def secret_config(tmp_path, **etcd):
    """A config.yaml with etcd TLS (a CA beside it, named relative to it) plus `etcd`."""
    path = tmp_path / "config.yaml"
    (tmp_path / "ca.pem").write_text("a CA\n")
    etcd = {"endpoints": ["e:1"], "keys": ["k"], "ca_cert": "ca.pem", **etcd}
    path.write_text(yaml.safe_dump({"etcd": {k: v for k, v in etcd.items() if v is not None},
                                    "kafka": {"bootstrap_servers": ["b:1"]}}))
    return path


def test_a_secret_comes_inline_from_a_file_or_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "etcd.pw").write_text("from-file\n")
    monkeypatch.setenv("LOGSHIP_TEST_PW", "from-env")
    forms = {"password": "inline", "password_file": "etcd.pw", "password_env": "LOGSHIP_TEST_PW"}
    for form, value in forms.items():
        config = load_config(secret_config(tmp_path, user="u", **{form: value}))
        assert config.etcd.password == {"password": "inline", "password_file": "from-file",
                                        "password_env": "from-env"}[form]


def test_etcd_tls_files_are_taken_from_the_configs_folder(tmp_path):
    (tmp_path / "client.pem").write_text("a certificate\n")
    (tmp_path / "client.key").write_text("a key\n")
    config = load_config(secret_config(tmp_path, cert_cert="client.pem", cert_key="client.key"))
    assert (config.etcd.ca_cert, config.etcd.cert_cert, config.etcd.cert_key) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))


@pytest.mark.parametrize("etcd, message", [
    ({"user": "u", "password": "secret-4711", "ca_cert": None},
     "etcd.user: needs etcd.ca_cert \\(TLS: etcd3 sends its auth token only over TLS\\)"),
    ({"cert_cert": "ca.pem"}, "etcd.cert_cert and etcd.cert_key: a client certificate needs both"),
    ({"cert_cert": "ca.pem", "cert_key": "ca.pem", "ca_cert": None},
     "etcd.cert_cert: needs etcd.ca_cert"),
    ({"ca_cert": "missing.pem"}, "etcd.ca_cert: cannot read .*/missing.pem: No such file"),
])
def test_etcd_tls_settings_that_cannot_work_are_refused(tmp_path, etcd, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(secret_config(tmp_path, **etcd))
    assert "secret-4711" not in str(error.value)


@pytest.mark.parametrize("etcd, message", [
    ({"user": "u", "password": "a", "password_file": "f"},
     "etcd.password and etcd.password_file: set only one"),
    ({"user": "u"}, "etcd.user and etcd.password: etcd authentication needs both"),
    ({"password": "secret-4711"}, "etcd.user and etcd.password: etcd authentication needs both"),
    ({"user": "u", "password_file": "missing.pw"}, "etcd.password_file: cannot read missing.pw"),
    ({"user": "u", "password_env": "LOGSHIP_UNSET_VARIABLE"},
     "etcd.password_env: environment variable LOGSHIP_UNSET_VARIABLE is not set"),
])
def test_secret_forms_that_cannot_work_are_refused_without_the_secret(tmp_path, etcd, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(secret_config(tmp_path, **etcd))
    assert "secret-4711" not in str(error.value)


def test_an_inline_secret_in_a_file_others_can_read_is_warned_about(tmp_path, caplog):
    path = secret_config(tmp_path, user="u", password="secret-4711")
    path.chmod(0o644)
    load_config(path)
    assert "holds etcd.password and is readable by every user" in caplog.text
    assert "secret-4711" not in caplog.text
    caplog.clear()
    path.chmod(0o640)
    load_config(path)
    assert caplog.text == ""

"""`logship check | put | get` as operators and scripts use them."""

from __future__ import annotations

import json

import pytest
import yaml

from harness import ROOT, logship

pytestmark = pytest.mark.e2e


@pytest.fixture
def config(etcd, kafka, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "etcd": {"endpoints": [etcd.address], "keys": ["k"]},
        "kafka": {"bootstrap_servers": [kafka.address]},
        "allowed_paths": [str(tmp_path) + "/**"],
    }))
    return path


def test_check_accepts_the_shipped_config():
    result = logship("check", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("text, message", [
    ("etcd: {keys: [k]}\nkafka: {bootstrap_servers: [x:1]}\n", "etcd.endpoints: required"),
    ("etcd: {endpoints: [nohost], keys: [k]}\nkafka: {bootstrap_servers: [x:1]}\n",
     "etcd.endpoints[0]: must be host:port"),
    ("etcd: {endpoints: ['a:1'], keys: [k]}\nkafka: {bootstrap_servers: [x:1]}\ncolour: red\n",
     "colour: unknown setting"),
    ("etcd: {endpoints: ['a:1'], keys: [k]}\nkafka: {bootstrap_servers: [x:1], producer: {acks: 1}}\n",
     "kafka.producer.acks: managed by logship"),
    ("etcd: {endpoints: ['a:1'], keys: [k]}\nkafka: {bootstrap_servers: [x:1]}\n"
     "logs: [{path: /etc/passwd, topic: t}]\n", "logs[0]: path: /etc/passwd"),
    ("etcd: [\n", "not valid YAML"),
])
def test_check_names_the_culprit(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = logship("check", "--config", str(path))
    assert result.returncode == 1
    assert message in result.stderr.decode()
    assert str(path) in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_put_validates_then_get_prints(config, tmp_path, etcd):
    good = json.dumps([{"path": str(tmp_path / "a.log"), "topic": "a"}]).encode()
    assert logship("put", "--config", str(config), "k", "-", stdin=good).returncode == 0
    result = logship("get", "--config", str(config), "k")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads(good)

    bad = json.dumps([{"path": "/etc/shadow", "topic": "a"}]).encode()
    result = logship("put", "--config", str(config), "k", "-", stdin=bad)
    assert result.returncode == 1
    assert b"entry 0: path: /etc/shadow" in result.stderr and b"nothing written" in result.stderr
    result = logship("put", "--config", str(config), "k", "-", stdin=b"{oops")
    assert result.returncode == 1 and b"key=k: value is not valid JSON" in result.stderr
    assert json.loads(logship("get", "--config", str(config), "k").stdout) == json.loads(good)


def test_get_of_a_missing_key_and_an_unreachable_etcd(config, tmp_path):
    result = logship("get", "--config", str(config), "never-written")
    assert result.returncode == 1 and b"key=never-written: not found" in result.stderr
    dead = tmp_path / "dead.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["etcd"]["endpoints"] = ["127.0.0.1:1"]
    dead.write_text(yaml.safe_dump(settings))
    result = logship("get", "--config", str(dead), "k")
    assert result.returncode == 1
    assert b"no etcd endpoint answered" in result.stderr and b"Traceback" not in result.stderr

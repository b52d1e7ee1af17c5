"""Hot reload of config.yaml (edited in place, replaced, broken) and SIGHUP."""

from __future__ import annotations

import copy
import os
import signal

import pytest
import yaml

from harness import logship, numbered, unique, without_module

pytestmark = pytest.mark.e2e


def entry(path, topic):
    return {"path": str(path), "topic": topic}


def replace_file(agent, config):
    """What editors like vim do: write a new file and rename it over the old one."""
    tmp = agent.config_path.with_suffix(".swp")
    agent.config = config
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, agent.config_path)


def test_keys_added_and_removed_by_edits(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    new_key = unique("key")
    etcd.put(key, [entry(first, topic)])
    etcd.put(new_key, [entry(second, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={first}")

    config = copy.deepcopy(agent.config)
    config["etcd"]["keys"] = [key, new_key]
    agent.write_config(config)                              # edited in place
    agent.wait_log(f"key {new_key} added; .* \\(files of added keys start as their values are "
                   f"read\\)\n")
    agent.wait_log(f"key={new_key} watching")
    agent.wait_log(f"worker started path={second}")

    config = copy.deepcopy(config)
    config["etcd"]["keys"] = [new_key]
    replace_file(agent, config)                             # replaced by rename
    agent.wait_log(f"worker stopped path={first}")
    second.write_bytes(b"from second\n")
    first.write_bytes(b"not shipped\n")
    assert [r.value for r in reader(topic).wait_count(1)] == [b"from second"]
    assert agent.log().count("agent started") == 1           # no restart of the process
    text = agent.scrape()
    assert 'logship_config_reloads_total{result="ok"} 2.0' in text
    assert 'result="unchanged"' not in text     # the agent's own reads trigger nothing


def test_broken_config_is_refused_and_the_running_one_stays(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "app.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    agent.config_path.write_text("etcd: [unclosed\n")
    agent.wait_log("config reload refused, keeping the running config: .*not valid YAML")
    broken = copy.deepcopy(agent.config)
    broken["kafka"]["bootstrap_servers"] = "not-a-list"
    agent.write_config(broken)
    agent.wait_log("config reload refused.*kafka.bootstrap_servers: must be a non-empty list")
    log.write_bytes(b"still running\n")
    assert [r.value for r in reader(topic).wait_count(1)] == [b"still running"]
    assert "Traceback" not in agent.log()


def test_sighup_and_static_entries_are_diffed(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    agent = make_agent(etcd, kafka, [key], logs=[entry(one, topic)])
    agent.start().wait_log(f"worker started path={one}")
    agent.signal(signal.SIGHUP)
    agent.wait_log("config reload requested by SIGHUP")
    agent.wait_log("config reloaded: unchanged")
    config = copy.deepcopy(agent.config)
    config["logs"] = [entry(one, topic), entry(two, topic)]
    agent.write_config(config)
    agent.wait_log(f"worker started path={two}")
    assert agent.log().count(f"worker started path={one}") == 1   # unchanged entry untouched
    one.write_bytes(b"1\n")
    two.write_bytes(b"2\n")
    assert sorted(r.value for r in reader(topic).wait_count(2)) == [b"1", b"2"]


def test_unknown_setting_warns_in_run_with_what_was_meant(etcd, kafka, make_agent, key,
                                                          tmp_path):
    agent = make_agent(etcd, kafka, [key], surprise=1, allowed_path=["/srv/**"])
    agent.start().wait_log("WARNING logship: config: allowed_path: unknown setting; did you "
                           "mean allowed_paths\\? \\(.*config.yaml: ignored, so its default applies")
    agent.wait_log("config: surprise: unknown setting \\(")
    agent.wait_log("agent started")


def test_a_client_that_is_not_installed_is_refused_by_check_and_on_reload(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    env = without_module(tmp_path / "site", "confluent_kafka")
    log = tmp_path / "app.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key])
    agent.env = env
    agent.start().wait_log(f"worker started path={log}")
    log.write_bytes(numbered(0, 1))
    topic_reader = reader(topic)
    topic_reader.wait_count(1)
    config = copy.deepcopy(agent.config)
    config["kafka"]["client"] = "confluent-kafka"
    agent.write_config(config)
    missing = ("kafka.client: confluent-kafka is not installed in this Python environment; "
               "install it with `.* -m pip install confluent-kafka`, or set kafka.client: "
               "kafka-python")
    agent.wait_log(f"config reload refused, keeping the running config: .*{missing}")
    with log.open("ab") as f:
        f.write(numbered(1, 1))
    topic_reader.wait_count(2)
    assert "Traceback" not in agent.log() and agent.proc.poll() is None
    for command in ("check", "run"):
        result = logship(command, "--config", agent.config_path, env=env)
        stderr = result.stderr.decode()
        assert result.returncode == 1 and "Traceback" not in stderr, stderr
        assert len(stderr.splitlines()) == 1 and "-m pip install confluent-kafka`" in stderr


def test_changed_kafka_and_etcd_settings_rebuild_the_clients(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "app.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"before\n")
    topic_reader = reader(topic)
    topic_reader.wait_count(1)
    config = copy.deepcopy(agent.config)
    config["kafka"]["producer"] = {"linger_ms": 20}
    config["kafka"]["compression"] = "gzip"
    config["etcd"]["endpoints"] = ["127.0.0.1:1", etcd.address]
    agent.write_config(config)
    agent.wait_log("kafka settings changed: producer rebuilt")
    agent.wait_log(f"key={key} watching on {etcd.address}", count=2)
    agent.wait_log(f"worker started path={log}", count=2)
    with open(log, "ab") as f:
        f.write(b"after\n")
    topic_reader.wait_count(2)
    assert [r.value for r in topic_reader.settle(1.0)] == [b"before", b"after"]
    assert agent.log().count("agent started") == 1


def test_a_misspelt_setting_refuses_the_reload_and_a_good_one_says_what_changed(
        etcd, kafka, make_agent, key, topic, tmp_path):
    log, static = tmp_path / "app.log", tmp_path / "static.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    config = copy.deepcopy(agent.config)
    config["files"]["poll_intervall"] = 2               # misspelt: would reset poll_interval
    agent.write_config(config)
    agent.wait_log("config reload refused, keeping the running config: .*"
                   "files.poll_intervall: unknown setting")
    assert "worker stopped" not in agent.log()
    config = copy.deepcopy(agent.config)
    del config["files"]["poll_intervall"]
    config["logs"] = [entry(static, topic)]
    agent.write_config(config)
    agent.wait_log(r"config reloaded from .*: changed logs; workers: 1 started, 0 stopped\n")
    agent.wait_log(f"worker started path={static}")

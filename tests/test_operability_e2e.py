"""What an operator meets first: HTTP endpoints, one agent per state_dir, the etcd-value
traps and the command line, through the real `logship run` and CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from harness import Agent, logship, wait_until

pytestmark = pytest.mark.e2e


def http_status(agent: Agent, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{agent.config['metrics']['listen']}{path}") as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_answers_404_off_its_paths_and_healthz_reports_state_saving(
        etcd, kafka, make_agent, key, topic, tmp_path):
    log = tmp_path / "app.log"
    etcd.put(key, [{"path": str(log), "topic": topic, "read_from": "beginning"}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    assert http_status(agent, "/nonsense")[0] == 404
    assert http_status(agent, "/healthz") == (200, "ok\n")
    metrics = agent.scrape()
    assert "process_cpu_seconds_total" in metrics and "logship_build_info{" in metrics
    assert "_created" not in metrics
    blocker = tmp_path / "state" / "checkpoints.tmp"   # the save's temp file cannot be made
    blocker.mkdir()
    log.write_bytes(b"one\n")                           # a new offset to save
    wait_until(lambda: http_status(agent, "/healthz")[0] == 503, 10, "/healthz to turn 503")
    assert "cannot save checkpoints" in http_status(agent, "/healthz")[1]
    assert agent.metric("logship_checkpoint_save_errors_total") >= 1
    blocker.rmdir()
    wait_until(lambda: http_status(agent, "/healthz")[0] == 200, 10, "/healthz to recover")
    agent.wait_log("checkpoints saved to .* again")
    wait_until(lambda: [c["offset"] for c in agent.checkpoints()] == [4], 10,
               "the line's offset saved (once Kafka acknowledged it: a new topic takes a while)")


def test_a_second_agent_on_the_same_state_dir_refuses_naming_the_first(etcd, kafka, make_agent,
                                                                      key, tmp_path):
    first = make_agent(etcd, kafka, [key]).start()
    first.wait_log("agent started")
    second = logship("run", "--config", str(first.config_path))
    assert second.returncode == 1
    assert f"in use by another logship agent (pid {first.proc.pid})" in second.stderr.decode()
    first.kill()                                        # the lock dies with its holder
    restarted = make_agent(etcd, kafka, [key]).start()
    restarted.wait_log("agent started")


def test_messages_for_a_missing_file_and_for_bytes_skipped_at_read_from_end(
        etcd, kafka, make_agent, key, topic, tmp_path):
    missing, existing = tmp_path / "later.log", tmp_path / "existing.log"
    existing.write_bytes(b"old line\n" * 3)
    etcd.put(key, [{"path": str(missing), "topic": topic}, {"path": str(existing), "topic": topic}])
    agent = make_agent(etcd, kafka, [key]).start()
    text = agent.wait_log(rf"path={existing} topic=\S+: opened at offset 27")
    agent.wait_log(rf"path={missing} topic=\S+: does not exist yet; waiting for it")
    assert "(read_from: end; the 27 bytes already there are not shipped)" in agent.log()
    assert text.count("does not exist yet") == 1


@pytest.fixture
def cli_config(etcd, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "etcd": {"endpoints": [etcd.address], "keys": ["watched"]},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9"]},
        "allowed_paths": [str(tmp_path) + "/**"]}))
    return path


def test_put_to_an_unwatched_key_fails_unless_forced_and_delete_removes_a_key(
        etcd, cli_config, tmp_path):
    value = f'[{{"path": "{tmp_path}/a.log", "topic": "t"}}]'.encode()
    put = logship("put", "--config", str(cli_config), "typo", "-", stdin=value)
    stderr = put.stderr.decode()
    assert put.returncode == 1 and put.stdout == b""
    assert "key=typo is not in etcd.keys" in stderr and "(watched)" in stderr
    assert "nothing written (--force writes it anyway)" in stderr
    assert logship("get", "--config", str(cli_config), "typo").returncode == 1, "not written"
    forced = logship("put", "--config", str(cli_config), "--force", "typo", "-", stdin=value)
    assert forced.returncode == 0 and "key=typo is not in etcd.keys" in forced.stderr.decode()
    assert forced.stdout.decode() == "key=typo: wrote 1 entry\n"
    deleted = logship("delete", "--config", str(cli_config), "typo")
    assert deleted.returncode == 0 and deleted.stdout.decode() == "key=typo: deleted\n"
    assert logship("get", "--config", str(cli_config), "typo").returncode == 1
    again = logship("delete", "--config", str(cli_config), "typo")
    assert again.returncode == 1 and "key=typo: not found" in again.stderr.decode()


def into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """A command whose reader has gone, as in `logship status | head -0`."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "logship", *args], stdout=write,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)


def test_commands_end_quietly_when_their_reader_goes_away(etcd, cli_config, tmp_path):
    value = json.dumps([{"path": f"{tmp_path}/a.log", "topic": "t"}]).encode()
    assert logship("put", "--config", cli_config, "watched", "-", stdin=value).returncode == 0
    for args in (["status", "--config", str(cli_config)], ["get", "--config", str(cli_config),
                 "watched"], ["check", "--config", str(cli_config)]):
        result = into_a_closed_pipe(*args)
        assert (result.returncode, result.stderr.decode()) == (141, ""), args
    assert into_a_closed_pipe("--help").stderr == b""


def test_check_judges_state_dir_without_creating_anything(etcd, kafka, tmp_path):
    path = tmp_path / "config.yaml"
    config = {"etcd": {"endpoints": [etcd.address], "keys": ["k"]},
              "kafka": {"bootstrap_servers": [kafka.address]},
              "state_dir": str(tmp_path / "var/lib/logship")}
    path.write_text(yaml.safe_dump(config))
    result = logship("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"], "nothing left behind"
    (tmp_path / "a-file").write_text("")
    path.write_text(yaml.safe_dump({**config, "state_dir": str(tmp_path / "a-file/state")}))
    refused = logship("check", "--config", str(path))
    assert (refused.returncode, refused.stderr.decode()) == (1, (
        f"logship: error: state_dir {tmp_path}/a-file/state: cannot be created or used: "
        f"Not a directory\n"))


@pytest.fixture
def silent_server():
    """Accepts TCP connections (the kernel does, from its backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_check_connect_ends_within_its_bound_when_servers_never_answer(silent_server, kafka,
                                                                       tmp_path, client):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "etcd": {"endpoints": [f"127.0.0.1:{silent_server}"], "keys": ["k"]},
        "kafka": {"bootstrap_servers": [f"127.0.0.1:{silent_server}", kafka.address],
                  "client": client}}))
    for _ in range(3):
        # The subprocess' own timeout is the hang detector; the bound is the check's.
        result = logship("check", "--connect", "--timeout", "2", "--config", str(path))
        lines = result.stdout.decode().splitlines()
        assert result.returncode == 1, lines
        assert lines[1] == "reaching 3 endpoints at once, each within 2s (3s in all)"
        assert lines[2].startswith(f"etcd 127.0.0.1:{silent_server}: FAILED: ")
        assert lines[3].startswith(f"kafka 127.0.0.1:{silent_server} ({client}): FAILED: ")
        assert lines[4].startswith(f"kafka {kafka.address} ({client}): ok")
        assert result.stderr.decode().endswith("logship: error: not every endpoint answered\n")


def test_check_connect_refuses_a_timeout_that_is_not_positive(tmp_path):
    result = logship("check", "--connect", "--timeout", "0", "--config", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "--timeout: must be a number of seconds above 0, got '0'" in result.stderr.decode()


def test_put_checks_a_glob_entry_and_names_what_is_wrong(etcd, cli_config, tmp_path):
    value = json.dumps([{"path": f"{tmp_path}/**.log", "topic": "t"},
                        {"path": "/etc/*.conf", "topic": "t"}]).encode()
    put = logship("put", "--config", str(cli_config), "watched", "-", stdin=value)
    assert put.returncode == 1
    stderr = put.stderr.decode()
    assert "entry 0: path: '**' must be a whole path component" in stderr
    assert "entry 1: path: /etc/*.conf: no file under /etc can be inside allowed_paths" in stderr
    good = json.dumps([{"path": f"{tmp_path}/**/*.log", "topic": "t"}]).encode()
    assert logship("put", "--config", str(cli_config), "watched", "-", stdin=good).returncode == 0


def test_version_and_help_describe_the_tool():
    version = logship("--version")
    assert version.returncode == 0 and version.stdout.decode().startswith("logship 0.")
    help_text = logship("--help").stdout.decode()
    assert "ships every line to Kafka" in help_text and "delete" in help_text


def test_check_in_the_wrong_folder_names_the_path_it_tried(tmp_path):
    result = logship("check", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode() == (f"logship: error: {tmp_path}/config.yaml: no such file; run "
                                      f"from the folder that holds config.yaml, or name it with "
                                      f"--config PATH\n")


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_check_connect_reaches_every_endpoint_and_says_which_failed(etcd, kafka, tmp_path, client):
    path = tmp_path / "config.yaml"
    config = {"etcd": {"endpoints": [etcd.address], "keys": ["k"]},
              "kafka": {"bootstrap_servers": [kafka.address], "client": client}}
    path.write_text(yaml.safe_dump(config))
    good = logship("check", "--connect", "--config", str(path))
    assert good.returncode == 0, good.stderr
    lines = good.stdout.decode().splitlines()
    assert lines[1] == "reaching 2 endpoints at once, each within 5s (6s in all)"
    assert lines[2].startswith(f"etcd {etcd.address}: ok, etcd 3.")
    assert lines[3].startswith(f"kafka {kafka.address} ({client}): ok, ")
    config["etcd"]["endpoints"].append("127.0.0.1:1")
    config["kafka"]["bootstrap_servers"].append("127.0.0.1:2")
    path.write_text(yaml.safe_dump(config))
    bad = logship("check", "--connect", "--config", str(path))
    assert bad.returncode == 1
    out = bad.stdout.decode()
    assert "etcd 127.0.0.1:1: FAILED: " in out
    assert f"kafka 127.0.0.1:2 ({client}): FAILED: connection refused" in out
    assert f"kafka {kafka.address} ({client}): ok" in out


@pytest.mark.parametrize("state_dir", ["/proc/logship-state", "/proc/self"])
def test_check_and_run_refuse_a_state_dir_that_takes_no_file(etcd, kafka, tmp_path, state_dir):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"etcd": {"endpoints": [etcd.address], "keys": ["k"]},
                                    "kafka": {"bootstrap_servers": [kafka.address]},
                                    "state_dir": state_dir}))
    for command in ("check", "run"):
        result = logship(command, "--config", str(path))
        assert result.returncode == 1
        assert f"state_dir {state_dir}: cannot be created or used" in result.stderr.decode()

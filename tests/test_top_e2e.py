"""`logship top` in a real terminal: tmux runs it against real agents, etcd and Kafka,
and the screen is read back with capture-pane."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import (AS_IN_A_TERMINAL, Agent, Etcd, etcd_metric, logship, stat_fields, unique,
                     wait_until)
from test_delivery_e2e import Writer
from test_fleet_e2e import fleet_documents

from logship.status import rfc3339

pytestmark = pytest.mark.e2e


class Terminal:
    """A tmux session on a server of its own; the pane stays after the command exits, so
    that its exit status can be read."""

    def __init__(self, workdir: Path, command: list[str], width: int = 100,
                 height: int = 30) -> None:
        self._socket = unique("top")
        conf = workdir / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\n")
        self._tmux("-f", conf, "new-session", "-d", "-s", "top", "-x", width, "-y", height,
                   shlex.join(command))

    def _tmux(self, *args) -> str:
        """The server, started by the first call, passes Ctrl-C to its panes' commands."""
        return subprocess.run([*AS_IN_A_TERMINAL, "tmux", "-L", self._socket, *map(str, args)],
                              check=True, capture_output=True, timeout=10).stdout.decode()

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def wait(self, condition, what: str, timeout: float = 30.0) -> str:
        def check():
            screen = self.screen()
            return screen if condition(screen) else None
        try:
            return wait_until(check, timeout, what, step=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def press(self, key: str) -> None:
        self._tmux("send-keys", "-t", "top", key)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "top", "-x", width, "-y", height)

    def wait_exit(self, what: str) -> int:
        """On a timeout, what top's threads were doing: SIGABRT makes its faulthandler
        print their stacks into the pane."""
        try:
            wait_until(lambda: self.exit_status() is not None, 30, what)
        except AssertionError as exc:
            pid = int(self._tmux("display-message", "-p", "-t", "top", "#{pane_pid}"))
            threads = _threads(pid)
            os.kill(pid, signal.SIGABRT)
            try:
                wait_until(lambda: self.exit_status() is not None, 10, "top to abort")
            except AssertionError:
                threads += "\nnot ended by SIGABRT:\n" + _threads(pid)
                os.kill(pid, signal.SIGKILL)
            stacks = self._tmux("capture-pane", "-p", "-t", "top", "-S", "-200")
            raise AssertionError(f"{exc}; its threads:\n{threads}\nthe screen and its "
                                 f"threads' stacks:\n{stacks}") from None
        return self.exit_status()

    def exit_status(self) -> int | None:
        """None while it runs; the exit code, or 128 + the signal that ended it."""
        dead, status, signum, pid = (self._tmux(
            "display-message", "-p", "-t", "top",
            "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}:#{pane_pid}")
            .strip().split(":"))
        if dead == "1" and (status or signum):
            return int(status) if status else 128 + int(signum)
        return _zombie_status(int(pid))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self._socket, "kill-server"], capture_output=True)


def _zombie_status(pid: int) -> int | None:
    """The exit status of a pane's process that has exited but was not reaped, from
    /proc (its last field: the status as waitpid reports it). Debian's tmux is built with
    libutempter, which puts in its own SIGCHLD handler while it records a pane's
    terminal: a child that exits meanwhile is never reaped by tmux (tmux issue #311), so
    its pane is dead (its terminal closed) without an exit status. A top that had exited
    stayed so in CI runs."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return None
    if fields[0] != "Z":
        return None
    status = int(fields[-1])
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _threads(pid: int) -> str:
    """Each thread's state and the kernel function it waits in, and the process's signal
    masks: what a process that does not exit is stuck on."""
    listing = subprocess.run(["ps", "-L", "-o", "tid,stat,wchan:32,comm", "-p", str(pid)],
                             capture_output=True, text=True).stdout
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        return f"{listing}\n{exc}"
    masks = [line for line in status.splitlines()
             if line.split(":")[0] in ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk",
                                        "SigIgn", "SigCgt")]
    return listing + "\n".join(masks)


def top_command(config: Path, *args: str) -> list[str]:
    """Without the COLUMNS and LINES pytest exports, which rich would take over the
    terminal's own size, as an operator's shell has none."""
    return ["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-X", "faulthandler", "-m",
            "logship", "top", "--config", str(config), *args]


def row(screen: str, name: str) -> dict | None:
    """An agent's or a file's row, its columns read from the right (a state may hold
    spaces): an agent's ends in FILES LINES/S LAG AGE, a file's (indented) in LINES/S LAG."""
    for line in screen.splitlines():
        words = line.split()
        if words and words[0] == name:
            rate, lag, unit = words[-4:-1] if line[0] != " " else words[-3:]
            return {"line": line, "rate": _rate(rate), "lag": _bytes(lag, unit)}
    return None


def _rate(text: str) -> float:
    return 0.0 if text == "-" else float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def _bytes(number: str, unit: str) -> float:
    return float(number) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)


def agent_of(workdir: Path, etcd, kafka, name: str, prefix: str, **status) -> Agent:
    workdir.mkdir(exist_ok=True)
    return Agent(workdir, etcd, kafka, [prefix + "hosts/{name}"], agent={"name": name},
                 status={"prefix": prefix + "agents/", "ttl": 3, "interval": 0.5,
                         "progress_interval": 1, **status})


@pytest.fixture
def prefix():
    return f"/{unique('top')}/"


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def open_terminal(*args, **kwargs) -> Terminal:
        opened.append(Terminal(*args, **kwargs))
        return opened[-1]
    yield open_terminal
    for terminal in opened:
        terminal.close()


def test_top_shows_an_agent_its_rate_and_its_lag_while_kafka_is_down(
        etcd, own_kafka, prefix, topic, terminals, tmp_path):
    if own_kafka.proc is None:
        own_kafka.start()
    agent = agent_of(tmp_path / "web-a", etcd, own_kafka, "web-a", prefix)
    log = agent.workdir / "app.log"
    log.write_bytes(b"")
    etcd.put(prefix + "hosts/web-a", [{"path": str(log), "topic": topic}])
    terminal = terminals(tmp_path, top_command(agent.config_path, "--interval", "0.5"))
    terminal.wait(lambda s: "no agent under the status prefix" in s, "an empty fleet")
    writer = None
    try:
        agent.start().wait_log(f"worker started path={log}")
        terminal.wait(lambda s: (r := row(s, "web-a")) and "shipping" in r["line"],
                      "the agent appearing, shipping")
        writer = Writer(log, total=10**9, rate=1000, batch=50)
        writer.start()
        terminal.wait(lambda s: (r := row(s, "web-a")) and r["rate"] > 0, "its lines/s moving")
        terminal.press("f")
        terminal.wait(lambda s: (r := row(s, "…" + str(log)[-23:])) and r["rate"] > 0,
                      "its file under it, cut on the left to fit")
        terminal.press("s")
        terminal.wait(lambda s: "sort: lines/s" in s, "the sort cycled")
        own_kafka.stop()
        held = terminal.wait(lambda s: (r := row(s, "web-a")) and "held" in r["line"]
                             and r["lag"] > 0, "the agent held, with lag", timeout=60)
        lag = row(held, "web-a")["lag"]
        terminal.wait(lambda s: (r := row(s, "web-a")) and r["lag"] > lag, "its lag growing")
        writer.stop()
        own_kafka.start()
        terminal.wait(lambda s: (r := row(s, "web-a")) and "shipping" in r["line"]
                      and r["lag"] == 0, "shipping again, its lag gone", timeout=90)
        terminal.press("q")
        assert terminal.wait_exit("top to exit on q") == 0
    finally:
        if writer is not None:
            writer.stop()
        if agent.proc is not None:
            agent.kill()


def age_of(line: str) -> float:
    """An agent row's AGE, in seconds."""
    age = line.split()[-1]
    return float(age[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age[-1]]


def test_top_marks_a_frozen_agent_stale_while_its_lease_lives_then_drops_it(
        etcd, kafka, prefix, topic, terminals, tmp_path):
    """An idle agent's document grows old without being stale: nothing it reports has
    moved. A busy agent that stops writing documents (SIGSTOP: its lease lives on until
    status.ttl) is stale once overdue, then gone with its lease."""
    idle = agent_of(tmp_path / "idle", etcd, kafka, "idle-1", prefix)
    busy = agent_of(tmp_path / "busy", etcd, kafka, "busy-1", prefix, ttl=15)
    log = busy.workdir / "busy.log"
    log.write_bytes(b"")
    etcd.put(prefix + "hosts/idle-1", [{"path": str(idle.workdir / "idle.log"), "topic": topic}])
    etcd.put(prefix + "hosts/busy-1", [{"path": str(log), "topic": topic}])
    viewer = agent_of(tmp_path / "viewer", etcd, kafka, "viewer", prefix)
    writer = Writer(log, total=10**9, rate=500, batch=25)
    try:
        idle.start().wait_log("worker started")
        busy.start().wait_log("worker started")
        writer.start()
        terminal = terminals(tmp_path, top_command(viewer.config_path, "--interval", "0.3"))
        terminal.wait(lambda s: (r := row(s, "busy-1")) and r["rate"] > 0, "the busy agent's rate")
        busy.signal(signal.SIGSTOP)
        screen = terminal.wait(lambda s: (r := row(s, "busy-1")) and "stale" in r["line"],
                               "the frozen agent marked stale, its lease alive")
        idle_row = row(screen, "idle-1")["line"]
        assert "stale" not in idle_row and "shipping" in idle_row
        terminal.wait(lambda s: (r := row(s, "idle-1")) and age_of(r["line"]) > 3
                      and "stale" not in r["line"], "the idle agent's document old, not stale")
        piped = logship("top", "--config", viewer.config_path)
        assert piped.returncode == 0, piped.stderr
        assert b"\x1b" not in piped.stdout and b"idle-1" in piped.stdout
        assert b"stale" in next(line for line in piped.stdout.splitlines() if b"busy-1" in line)
        terminal.wait(lambda s: row(s, "busy-1") is None, "the frozen agent gone with its lease",
                      timeout=40)
        idle.kill()
        terminal.wait(lambda s: row(s, "idle-1") is None, "the killed agent gone with its lease")
    finally:
        writer.stop()
        for agent in (idle, busy):
            if agent.proc is not None:
                agent.kill()


def test_top_in_a_small_terminal_through_an_etcd_outage_and_ctrl_c(
        kafka, prefix, terminals, tmp_path_factory, tmp_path):
    etcd = Etcd(tmp_path_factory.mktemp("etcd-top") / "data")
    etcd.start()
    try:
        viewer = agent_of(tmp_path, etcd, kafka, "viewer", prefix)
        terminal = terminals(tmp_path, top_command(viewer.config_path, "--interval", "0.3"),
                             width=60, height=20)
        terminal.wait(lambda s: "terminal too small: 60x20" in s, "too small, said")
        terminal.resize(80, 24)
        terminal.wait(lambda s: "no agent under the status prefix" in s, "drawn at 80x24")
        etcd.stop()
        # The first failed read names the endpoint ("etcd 127.0.0.1:P: ..."), the next
        # failed connect says "no etcd endpoint answered (127.0.0.1:P: ...)", which 80
        # columns cut after "retrying every"
        screen = terminal.wait(lambda s: "retrying every" in s, "etcd down, on screen")
        assert etcd.address in screen and "Traceback" not in screen
        etcd.start()
        terminal.wait(lambda s: "retrying" not in s, "etcd back, the message gone", timeout=60)
        terminal.press("C-c")
        assert terminal.wait_exit("top to exit on Ctrl-C") == 0
        assert "Traceback" not in terminal.screen()
    finally:
        etcd.stop()


def range_reads(etcd: Etcd) -> float:
    return etcd_metric(etcd, "grpc_server_started_total", grpc_method="Range")


def test_top_follows_the_fleet_by_a_watch_and_reads_again_only_when_it_is_lost(
        kafka, prefix, terminals, tmp_path_factory, tmp_path):
    """Counted by etcd itself: after the first frame, documents added, changed and
    deleted reach the screen with no range read; a restarted etcd is read again."""
    etcd = Etcd(tmp_path_factory.mktemp("etcd-watch") / "data")
    etcd.start()
    try:
        fleet_documents(etcd, prefix + "agents/", 300, 3000)
        viewer = agent_of(tmp_path, etcd, kafka, "viewer", prefix)
        terminal = terminals(tmp_path, top_command(viewer.config_path, "--interval", "0.3"))
        terminal.wait(lambda s: s.startswith("logship top: 300 agents"), "the first frame")
        reads = range_reads(etcd)
        fleet_documents(etcd, prefix + "agents/", 302, 3000)
        terminal.wait(lambda s: s.startswith("logship top: 302 agents"), "two new agents")
        held = {"name": "agent-00005", "host": "h", "version": "0.1.0", "kafka": "unavailable",
                "updated": rfc3339(time.time()), "interval": 0.5, "progress_interval": 1,
                "kafka_cause": "all brokers down", "files_total": 1, "lag_bytes": 5 << 30,
                "files": []}
        etcd.put(prefix + "agents/agent-00005", held)
        terminal.wait(lambda s: (r := row(s, "agent-00005")) and "held" in r["line"]
                      and r["lag"] == 5 << 30, "a changed document, worst lag first")
        etcd.delete(prefix + "agents/agent-00005")
        terminal.wait(lambda s: s.startswith("logship top: 301 agents")
                      and row(s, "agent-00005") is None, "a deleted document gone")
        assert range_reads(etcd) == reads, "top read the prefix again"
        etcd.stop()
        terminal.wait(lambda s: "retrying every" in s, "etcd down, on screen")
        etcd.start()
        terminal.wait(lambda s: "retrying" not in s, "read again once etcd is back", timeout=60)
        assert range_reads(etcd) > 0
        fleet_documents(etcd, prefix + "agents/", 303, 3000)
        terminal.wait(lambda s: s.startswith("logship top: 303 agents"),
                      "changes after the outage, by the new watch")
        terminal.press("q")
        assert terminal.wait_exit("top to exit on q") == 0
    finally:
        etcd.stop()


@pytest.mark.parametrize("args, error", [
    (["--interval", "0"], "--interval: must be a number of seconds above 0, got '0'"),
    (["--interval", "soon"], "--interval: must be a number of seconds above 0, got 'soon'"),
    (["--agent", "nosuch-agent"], "agent nosuch-agent: no status under "),
])
def test_top_refuses_bad_input_in_one_line(etcd, kafka, prefix, tmp_path, args, error):
    viewer = agent_of(tmp_path, etcd, kafka, "viewer", prefix)
    result = logship("top", "--config", viewer.config_path, *args)
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert line.startswith(f"logship: error: {error}"), line


def test_top_with_etcd_down_at_start_is_one_line(kafka, prefix, tmp_path):
    viewer = agent_of(tmp_path, ["127.0.0.1:1"], kafka, "viewer", prefix)
    result = logship("top", "--config", viewer.config_path)
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("logship: error: ") and "127.0.0.1:1" in line, line

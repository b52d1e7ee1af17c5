"""`logship top` in a real terminal: tmux runs it against real agents, etcd and Kafka,
and the screen is read back with capture-pane."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import (Agent, Etcd, as_in_a_terminal, logship, stat_fields, unique,
                     wait_until)
from test_delivery_e2e import Writer

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
        return subprocess.run(["tmux", "-L", self._socket, *map(str, args)], check=True,
                              capture_output=True, timeout=10,
                              preexec_fn=as_in_a_terminal).stdout.decode()

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
                 status={"prefix": prefix + "agents/", "ttl": 3, "interval": 0.5, **status})


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


def test_top_marks_a_stale_agent_and_drops_one_whose_lease_expired(
        etcd, kafka, prefix, topic, terminals, tmp_path):
    agent = agent_of(tmp_path / "idle", etcd, kafka, "idle-1", prefix, ttl=8)
    etcd.put(prefix + "hosts/idle-1", [{"path": str(agent.workdir / "idle.log"), "topic": topic}])
    viewer = agent_of(tmp_path / "viewer", etcd, kafka, "viewer", prefix, ttl=2)
    try:
        agent.start().wait_log("worker started")
        terminal = terminals(tmp_path, top_command(viewer.config_path, "--interval", "0.3"))
        terminal.wait(lambda s: (r := row(s, "idle-1")) and "stale" in r["line"],
                      "an agent whose document stopped moving, marked stale")
        piped = logship("top", "--config", viewer.config_path)
        assert piped.returncode == 0, piped.stderr
        assert b"\x1b" not in piped.stdout and b"idle-1" in piped.stdout
        agent.kill()
        terminal.wait(lambda s: row(s, "idle-1") is None, "the agent gone with its lease")
    finally:
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

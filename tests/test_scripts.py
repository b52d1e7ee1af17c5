"""The scripts behind `make run` and the test services, as an operator calls them: each
says its usage, and the services `make run` starts outlive a Ctrl-C of the agent."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness import AS_IN_A_TERMINAL, SCRIPTS, free_port_pair, port_open, wait_until


@pytest.mark.parametrize("script, usage", [
    ("local-etcd.sh", "run|start|stop PORT DATA_DIR"),
    ("local-kafka.sh", "run|start|stop PORT DATA_DIR"),
    ("ensure-local-services.sh", "CONFIG LOCAL_DIR")])
def test_every_script_says_its_usage(script, usage):
    for args in ([], ["bogus", "1", "/tmp/x"]):
        result = subprocess.run([SCRIPTS / script, *args][:1 if script.startswith("ensure")
                                                          else 4], capture_output=True)
        assert (result.returncode, result.stderr.decode()) == (2, f"usage: {SCRIPTS / script} "
                                                                  f"{usage}\n")


@pytest.mark.e2e
def test_a_started_service_outlives_ctrl_c_in_the_terminal_that_started_it(tmp_path):
    port, data = free_port_pair(), tmp_path / "etcd"
    # A terminal's foreground process group: `make run`, its scripts, then the agent.
    terminal = subprocess.Popen([*AS_IN_A_TERMINAL, "bash", "-c",
                                 f"'{SCRIPTS}/local-etcd.sh' start {port} '{data}'"
                                 f" && exec sleep 600"],
                                start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert terminal.stdout.readline() == (      # printed once the port answers
            f"started etcd on 127.0.0.1:{port} (data in {data}); it keeps running after the "
            f"agent stops: stop it with '{SCRIPTS}/local-etcd.sh stop {port} {data}'\n")
        pid = int((data / "etcd.pid").read_text())
        assert os.getsid(pid) == pid != os.getsid(terminal.pid), "a session of its own"
        # Ctrl-C once the job is in its last command: a SIGINT that reaches bash between
        # the script's exit and the `exec` would be taken by bash and lost for the sleep.
        wait_until(lambda: Path(f"/proc/{terminal.pid}/comm").read_text() == "sleep\n", 30,
                   "the terminal's job to reach its last command")
        os.killpg(terminal.pid, signal.SIGINT)                   # Ctrl-C
        terminal.wait(30)
        assert port_open(port)
    finally:
        stop = subprocess.run([SCRIPTS / "local-etcd.sh", "stop", str(port), str(data)],
                              capture_output=True, text=True, timeout=60)
        terminal.kill()
    assert stop.stdout.startswith(f"etcd on 127.0.0.1:{port} stopped (pid ")

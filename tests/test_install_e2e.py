"""Installing on a host without a checkout: the wheel carries the unit and a sample
config, `logship install-unit` writes them, and systemd accepts the hardened unit."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest

from harness import ROOT, logship
from logship.config import load_config

pytestmark = pytest.mark.e2e


def test_the_wheel_carries_the_unit_a_sample_config_and_the_rules_and_builds_quietly(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path), str(ROOT)], check=True, capture_output=True,
                           text=True, timeout=300)
    assert build.stdout + build.stderr == "", "setuptools warnings: package the data properly"
    [wheel] = tmp_path.glob("logship-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "logship/data/logship.service" in names and "logship/data/config.yaml" in names
    assert "logship/data/prometheus/logship-rules.yaml" in names


def test_install_unit_writes_a_hardened_unit_and_keeps_an_existing_config(tmp_path):
    result = logship("install-unit", "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system/logship.service"
    config = tmp_path / "etc/logship/config.yaml"
    launcher = re.search(r"^ExecStart=(\S+) run ", unit.read_text(), re.M).group(1)
    assert shutil.which(launcher), f"{launcher} is not an executable"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    sample = load_config(config)
    assert sample.state_dir.as_posix() == "/var/lib/logship"
    assert sample.etcd.keys[0] == f"logship/hosts/{sample.name}"
    config.write_text("# edited\n")
    assert "kept" in logship("install-unit", "--root", tmp_path).stdout.decode()
    assert config.read_text() == "# edited\n"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "etc/systemd/system/logship.service").mkdir(parents=True)
    refused = logship("install-unit", "--root", elsewhere)
    assert (refused.returncode, refused.stderr.decode()) == (1, (
        f"logship: error: {elsewhere}/etc/systemd/system/logship.service: cannot write: Is a "
        f"directory (run as root, or give --root DIR)\n"))
    if shutil.which("systemd-analyze") is None:
        return          # the unit's checks need systemd's own tool; the rest was checked
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for logship.service: ([\d.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) < 5, security.stdout[-2000:]

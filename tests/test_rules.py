"""The Prometheus rules the wheel carries, proven with Prometheus' own promtool, and
held to the metric names a real agent exports."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import ROOT, Agent, logship

RULES = ROOT / "logship" / "data" / "prometheus" / "logship-rules.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "logship-rules.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_and_hold_every_alert():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in rules() if "alert" in rule}


def test_every_alert_says_what_it_is_and_what_to_do():
    for rule in rules():
        if "alert" in rule:
            annotations = rule["annotations"]
            assert annotations["summary"] and len(annotations["description"]) > 100, rule["alert"]


def test_logship_rules_prints_the_shipped_file(tmp_path):
    result = logship("rules")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == RULES.read_text()
    printed = tmp_path / "printed.yaml"
    printed.write_bytes(result.stdout)
    assert promtool("check", "rules", printed).returncode == 0


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape can hold: a family with no sample yet (a labelled
    counter before its first increment) still names its samples' suffixes."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "summary": ["_sum", "_count", ""]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


@pytest.mark.e2e
def test_the_rules_use_only_metrics_a_running_agent_exports(etcd, kafka, key, tmp_path):
    agent = Agent(tmp_path, etcd, kafka, [key]).start()
    try:
        agent.wait_log("metrics on http://")
        exported = exported_names(agent.scrape())
    finally:
        agent.kill()
    used = {name for rule in rules() for name in re.findall(r"\blogship_\w+", rule["expr"])}
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"

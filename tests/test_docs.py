"""The docs kept true to the code: links resolve, the configuration reference and the
config parser agree field for field, the README's commands exist, the troubleshooting
table holds every warning and error line the agent can write."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from harness import ROOT
from logship import config as config_module
from logship.spec import _FIELDS, _MULTILINE_FIELDS

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) < 10 * 1024
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    assert {f"docs/{page.name}" for page in DOCS} <= linked, "every page on the map"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    for link in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link}: no such file"
        if anchor:
            assert anchor in anchors(path), f"{page.name}: {link}: no such heading"


def documented_settings() -> set[str]:
    """The names in the first column of the configuration reference's table."""
    names = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z_.]+)`", line.split("|")[1]))
    return names


def accepted_settings(monkeypatch) -> set[str]:
    """Every setting the parser reads, from configs that take each of its branches."""
    sections = []
    init = config_module._Section.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        sections.append(self)
    monkeypatch.setattr(config_module._Section, "__init__", recording)
    base = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
            "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}
    for extra in ({}, {"kafka": {**base["kafka"], "delivery": "exactly-once"},
                       "agent": {"name": "web-01"}}):
        config_module.parse_config({**base, **extra}, Path("/tmp"))
    names = {section.field(key) for section in sections for key in section.used}
    return {name for name in names if not any(other.startswith(name + ".") for other in names)}


def test_every_setting_the_code_reads_is_in_the_configuration_reference(monkeypatch):
    missing = accepted_settings(monkeypatch) - documented_settings()
    assert not missing, f"not in docs/configuration.md: {sorted(missing)}"


def test_every_setting_in_the_configuration_reference_is_accepted():
    for name in sorted(documented_settings()):
        section, _, key = name.rpartition(".")
        data = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
                "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}
        if section:
            data[section] = {**data.get(section, {}), key: "?"}
        else:
            data[key] = "?"
        try:
            warnings = config_module.parse_config(data, Path("/tmp")).warnings
        except config_module.ConfigError as exc:
            warnings = (str(exc),)      # read, and its value refused: it is a setting
        assert not [w for w in warnings if w.startswith(f"{name}: unknown setting")], name


def test_every_entry_field_is_in_the_etcd_value_page():
    page = (ROOT / "docs" / "etcd-value.md").read_text()
    for field in _FIELDS | _MULTILINE_FIELDS:
        assert f'`{field}`' in page or f'"{field}"' in page, field


def test_the_readmes_make_commands_are_make_targets():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    used = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", (ROOT / "README.md").read_text(), re.M))
    assert {"run", "test"} <= used and used <= targets, sorted(used - targets)


def logged_formats() -> list[tuple[str, str]]:
    """The format of every warning and error the package logs, with where it is."""
    found = []
    for module in sorted((ROOT / "logship").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("warning", "error", "critical") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                found.append((f"{module.name}:{node.lineno}", node.args[0].value))
    return found


def test_the_troubleshooting_table_holds_every_warning_and_error_line():
    """Each line is known by its longest fixed words (its words between placeholders)."""
    page = (ROOT / "docs" / "operating.md").read_text()
    table = page[page.index("## Troubleshooting"):].replace("`", "")
    formats = logged_formats()
    assert len(formats) > 30
    missing = []
    for where, fmt in formats:
        words = max(re.split(r"%[-#0 +]*\d*(?:\.\d+)?[sdfr]", fmt), key=len).strip(" ;:,()")
        if len(words) >= 8 and words.replace("`", "") not in table:
            missing.append(f"{where}: {words!r}")
    assert not missing, "not in the troubleshooting table:\n" + "\n".join(missing)

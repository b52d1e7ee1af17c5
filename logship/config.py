"""config.yaml: load, validate into frozen dataclasses, report errors by field name.

Validation is strict about types and values; unknown keys are collected as warnings so
that `logship check` can refuse them while `logship run` only warns (an operator who
adds a setting for a newer version must not take the agent down).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from logship.errors import ConfigError
from logship.globs import compile_glob
from logship.logs import did_you_mean, shown
from logship.spec import Target, check_allowed, parse_entry, split_host_port, valid_topic

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_PATHS = ("/var/log/**",)
CLIENTS = ("kafka-python", "confluent-kafka")
DELIVERIES = ("at-least-once", "exactly-once")
TRANSACTIONAL_NAME = re.compile(r"[!-~]{1,200}")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[tuple[str, int], ...]
    keys: tuple[str, ...]
    timeout: float = 5.0
    probe_interval: float = 5.0
    ca_cert: str | None = None
    cert_key: str | None = None
    cert_cert: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: tuple[str, ...]
    client: str = "kafka-python"
    compression: str = "none"
    api_version: str = "2.8"
    max_block_ms: int = 3000
    max_request_size: int = 1024 * 1024
    buffer_bytes: int = 64 * 1024 * 1024
    producer: tuple[tuple[str, Any], ...] = ()
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    delivery: str = "at-least-once"
    transaction_interval: float = 0.2
    offsets_topic: str = "logship-offsets"

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"


@dataclass(frozen=True)
class FilesConfig:
    poll_interval: float = 1.0
    safety_poll_interval: float = 10.0
    read_chunk_bytes: int = 1024 * 1024
    max_line_bytes: int = 1_000_000
    max_in_flight_lines: int = 20000
    max_in_flight_bytes: int = 16 * 1024 * 1024
    close_rotated_after: float = 5.0
    close_removed_timeout: float = 300.0
    max_files: int = 10_000


@dataclass(frozen=True)
class JournalConfig:
    """How journal entries are read: the journalctl to run, a name on PATH or a path."""

    journalctl: str = "journalctl"


@dataclass(frozen=True)
class StatusConfig:
    """The agent's status document in etcd, on a lease that dies with the agent.

    Presence is the lease alone (a keep-alive writes no revision); the document is
    rewritten within `interval` of a change an operator acts on, and for its counters
    at most every `progress_interval`: with thousands of agents on one etcd, every
    write stays in its history until compaction."""

    prefix: str = "/logship/agents/"
    ttl: int = 15
    interval: float = 5.0
    progress_interval: float = 60.0

    @property
    def keepalive(self) -> float:
        """Three keep-alives per ttl: the lease survives two lost ones."""
        return self.ttl / 3


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    etcd: EtcdConfig
    kafka: KafkaConfig
    name: str = field(default_factory=socket.gethostname)
    status: StatusConfig = field(default_factory=StatusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    logs: tuple[Target, ...] = ()
    allowed_paths: tuple[str, ...] = DEFAULT_ALLOWED_PATHS
    state_dir: Path = Path("state")
    metrics_listen: tuple[str, int] | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)


class _Section:
    """Reads one mapping of the YAML document and remembers which keys were used."""

    def __init__(self, data: Any, name: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: must be a mapping, got {_type(data)}")
        self.data = data
        self.name = name
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, convert: Callable[[Any, str], Any], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise ConfigError(f"{self.field(key)}: required")
            return default
        return convert(self.data[key], self.field(key))

    def unknown(self) -> list[str]:
        qualify = f"{self.name}." if self.name else ""
        return [f"{self.field(str(k))}: unknown setting{did_you_mean(str(k), self.used, qualify)}"
                for k in self.data if k not in self.used]


def _type(value: Any) -> str:
    """A YAML value's type by the name an operator knows."""
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _as_is(value: Any, name: str) -> Any:
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: must be a non-empty string, got {shown(value)}")
    return value


def _secret(value: Any, name: str) -> str:
    """Like _str, but the value is never echoed: it may be a password."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: must be a non-empty string, got {_type(value)} "
                          f"(value not shown)")
    return value


def _secret_field(section: _Section, key: str, base_dir: Path) -> str | None:
    """A secret from one of three forms: inline `key`, `key_file` (a file holding it, its
    trailing newline stripped) or `key_env` (an environment variable), so that
    config.yaml itself need not hold it. More than one form is an error naming them."""
    names = (key, f"{key}_file", f"{key}_env")
    section.used.update(names)
    forms = [name for name in names if section.data.get(name) is not None]
    if len(forms) > 1:
        raise ConfigError(f"{' and '.join(section.field(f) for f in forms)}: set only one")
    if not forms:
        return None
    form = forms[0]
    if form == key:
        return section.get(key, _secret)
    if form.endswith("_file"):
        path = Path(section.get(form, _str))
        try:
            return _resolved(path, base_dir).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{section.field(form)}: cannot read {shown(str(path))}: "
                              f"{getattr(exc, 'strerror', None) or 'not UTF-8'}") from None
    variable = section.get(form, _str)
    if not os.environ.get(variable):
        raise ConfigError(f"{section.field(form)}: environment variable {shown(variable)} is "
                          f"not set or empty")
    return os.environ[variable]


def _number(minimum: float) -> Callable[[Any, str], float]:
    def convert(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ConfigError(f"{name}: must be a number >= {minimum}, got {shown(value)}")
        return float(value)
    return convert


def _int(minimum: int) -> Callable[[Any, str], int]:
    def convert(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name}: must be an integer >= {minimum}, got {shown(value)}")
        return value
    return convert


def _list_of(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple]:
    def convert(value: Any, name: str) -> tuple:
        if isinstance(value, str) or not isinstance(value, list) or not value:
            raise ConfigError(f"{name}: must be a non-empty list, got {shown(value)}")
        return tuple(item(v, f"{name}[{i}]") for i, v in enumerate(value))
    return convert


def _endpoint(value: Any, name: str) -> tuple[str, int]:
    try:
        return split_host_port(_str(value, name))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _etcd_endpoint(value: Any, name: str) -> tuple[str, int]:
    """host:port, or the URL form etcdctl users write (http://host:port, https://...)."""
    text = _str(value, name)
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("http", "https"):
        text = rest.rstrip("/")
    elif sep:
        raise ConfigError(f"{name}: scheme {shown(scheme)}:// not supported; "
                          f"use host:port, http:// or https://")
    return _endpoint(text, name)


def _broker(value: Any, name: str) -> str:
    """A Kafka bootstrap server: host:port only (Kafka has no URL form)."""
    host, port = _endpoint(value, name)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _api_version(value: Any, name: str) -> str:
    text = str(value)
    if not all(part.isdigit() for part in text.split(".")):
        raise ConfigError(f"{name}: must look like '2.8', got {shown(value)}")
    return text


def _mapping(value: Any, name: str) -> tuple[tuple[str, Any], ...]:
    """The client's own settings; the sink judges them for the chosen client."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping of the client's producer settings")
    return tuple(sorted((str(k), v) for k, v in value.items()))


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def convert(value: Any, name: str) -> str:
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {shown(value)}")
        return value
    return convert


PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def expand_key(key: str, name: str, where: str = "key") -> str:
    """`{name}` (agent.name) and `{hostname}` in an etcd key, so that one config.yaml
    serves a fleet; any other placeholder is an error naming it."""
    values = {"name": name, "hostname": socket.gethostname()}

    def value(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ConfigError(f"{where}: unknown placeholder {match.group(0)} in {key!r}; "
                              f"use {{name}} or {{hostname}}")
        return values[match.group(1)]
    return PLACEHOLDER.sub(value, key)


def _keys(name: str) -> Callable[[Any, str], tuple[str, ...]]:
    def convert(value: Any, where: str) -> tuple[str, ...]:
        keys = _list_of(_str)(value, where)
        return tuple(expand_key(key, name, f"{where}[{i}]") for i, key in enumerate(keys))
    return convert


def _etcd(section: _Section, base_dir: Path, name: str) -> EtcdConfig:
    _refuse_https_without_tls(section)
    config = EtcdConfig(
        endpoints=section.get("endpoints", _list_of(_etcd_endpoint)),
        keys=section.get("keys", _keys(name)),
        timeout=section.get("timeout", _number(0.1), 5.0),
        probe_interval=section.get("probe_interval", _number(0.1), 5.0),
        ca_cert=section.get("ca_cert", _readable_file(base_dir), None),
        cert_key=section.get("cert_key", _readable_file(base_dir), None),
        cert_cert=section.get("cert_cert", _readable_file(base_dir), None),
        user=section.get("user", _str, None),
        password=_secret_field(section, "password", base_dir),
    )
    _both_or_neither(section, "user", config.user, "password", config.password,
                     "etcd authentication needs both (password, password_file or password_env)")
    _both_or_neither(section, "cert_cert", config.cert_cert, "cert_key", config.cert_key,
                     "a client certificate needs both")
    _needs(section, "user", config.user, "ca_cert", config.ca_cert,
           "TLS: etcd3 sends its auth token only over TLS")
    _needs(section, "cert_cert", config.cert_cert, "ca_cert", config.ca_cert,
           "the CA that signed etcd's certificate")
    return config


def _both_or_neither(section: _Section, name: str, value: Any, other: str, other_value: Any,
                     why: str) -> None:
    if (value is None) != (other_value is None):
        raise ConfigError(f"{section.field(name)} and {section.field(other)}: {why}")


def _needs(section: _Section, name: str, value: Any, other: str, other_value: Any,
           why: str) -> None:
    if value is not None and other_value is None:
        raise ConfigError(f"{section.field(name)}: needs {section.field(other)} ({why})")


def _refuse_https_without_tls(section: _Section) -> None:
    endpoints = section.data.get("endpoints")
    https = [i for i, e in enumerate(endpoints if isinstance(endpoints, list) else [])
             if isinstance(e, str) and e.startswith("https://")]
    if https and not section.data.get("ca_cert"):
        raise ConfigError(f"{section.field('endpoints')}[{https[0]}]: https:// needs "
                          f"{section.field('ca_cert')} (the CA that signed etcd's certificate)")


def _readable_file(base_dir: Path) -> Callable[[Any, str], str]:
    """A file the agent reads (a CA, a certificate, a key), relative to config.yaml's
    folder like every path in it; unreadable is a config error, not a failed handshake."""
    def convert(value: Any, name: str) -> str:
        path = _resolved(Path(_str(value, name)), base_dir)
        try:
            with open(path, "rb"):
                return str(path)
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {shown(str(path))}: {exc.strerror}") from None
    return convert


def _resolved(path: Path, base_dir: Path) -> Path:
    return path if path.is_absolute() else base_dir / path


def _kafka(section: _Section, base_dir: Path) -> KafkaConfig:
    config = KafkaConfig(
        bootstrap_servers=section.get("bootstrap_servers", _list_of(_broker)),
        client=section.get("client", _one_of(CLIENTS), "kafka-python"),
        compression=section.get("compression", _one_of(COMPRESSIONS), "none"),
        api_version=section.get("api_version", _api_version, "2.8"),
        max_block_ms=section.get("max_block_ms", _int(100), 3000),
        max_request_size=section.get("max_request_size", _int(1024), 1024 * 1024),
        buffer_bytes=section.get("buffer_bytes", _int(1024 * 1024), 64 * 1024 * 1024),
        producer=section.get("producer", _mapping, ()),
        security_protocol=section.get("security_protocol", _one_of(SECURITY_PROTOCOLS),
                                      "PLAINTEXT"),
        ssl_cafile=section.get("ssl_cafile", _readable_file(base_dir), None),
        ssl_certfile=section.get("ssl_certfile", _readable_file(base_dir), None),
        ssl_keyfile=section.get("ssl_keyfile", _readable_file(base_dir), None),
        sasl_mechanism=section.get("sasl_mechanism", _one_of(SASL_MECHANISMS), None),
        sasl_username=section.get("sasl_username", _str, None),
        sasl_password=_secret_field(section, "sasl_password", base_dir),
        delivery=section.get("delivery", _one_of(DELIVERIES), "at-least-once"),
        transaction_interval=section.get("transaction_interval", _between(0.01, 60.0), 0.2),
        offsets_topic=section.get("offsets_topic", _topic, "logship-offsets"),
    )
    _check_kafka_security(config, section)
    return config


def _between(low: float, high: float) -> Callable[[Any, str], float]:
    def convert(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise ConfigError(f"{name}: must be a number from {low:g} to {high:g}, "
                              f"got {shown(value)}")
        return float(value)
    return convert


def _topic(value: Any, name: str) -> str:
    topic = _str(value, name)
    if not valid_topic(topic):
        raise ConfigError(f"{name}: not a valid Kafka topic name (letters, digits, '.', '_', "
                          f"'-', at most 249), got {shown(topic)}")
    return topic


def _check_transactional_id(config: Config, section: _Section) -> None:
    """Exactly-once writes as the transactional id logship-<agent.name>; a name Kafka
    would take but an operator could not type (spaces, control characters) is refused."""
    if config.kafka.exactly_once and not TRANSACTIONAL_NAME.fullmatch(config.name):
        raise ConfigError(f"{section.field('name')}: kafka.delivery: exactly-once uses "
                          f"logship-<agent.name> as the Kafka transactional id; the name must "
                          f"be 1-200 printable characters without spaces, got "
                          f"{shown(config.name)}")


def _check_kafka_security(config: KafkaConfig, section: _Section) -> None:
    """Settings that cannot work together are refused, naming the field to change."""
    protocol = config.security_protocol
    ssl = {"ssl_cafile": config.ssl_cafile, "ssl_certfile": config.ssl_certfile,
           "ssl_keyfile": config.ssl_keyfile}
    sasl = {"sasl_mechanism": config.sasl_mechanism, "sasl_username": config.sasl_username,
            "sasl_password": config.sasl_password}
    for name, value in ssl.items():
        if value is not None and protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(f"{section.field(name)}: needs {section.field('security_protocol')} "
                              f"SSL or SASL_SSL, got {protocol}")
    _both_or_neither(section, "ssl_certfile", config.ssl_certfile, "ssl_keyfile",
                     config.ssl_keyfile, "a client certificate needs both")
    for name, value in sasl.items():
        if protocol.startswith("SASL_") and value is None:
            raise ConfigError(f"{section.field(name)}: required with "
                              f"{section.field('security_protocol')} {protocol}")
        if not protocol.startswith("SASL_") and value is not None:
            raise ConfigError(f"{section.field(name)}: needs {section.field('security_protocol')} "
                              f"SASL_PLAINTEXT or SASL_SSL, got {protocol}")


def _files(section: _Section) -> FilesConfig:
    defaults = FilesConfig()
    return FilesConfig(
        poll_interval=section.get("poll_interval", _number(0.05), defaults.poll_interval),
        safety_poll_interval=section.get("safety_poll_interval", _number(0.05),
                                         defaults.safety_poll_interval),
        read_chunk_bytes=section.get("read_chunk_bytes", _int(4096), defaults.read_chunk_bytes),
        max_line_bytes=section.get("max_line_bytes", _int(1024), defaults.max_line_bytes),
        max_in_flight_lines=section.get("max_in_flight_lines", _int(1), defaults.max_in_flight_lines),
        max_in_flight_bytes=section.get("max_in_flight_bytes", _int(4096), defaults.max_in_flight_bytes),
        close_rotated_after=section.get("close_rotated_after", _number(0), defaults.close_rotated_after),
        close_removed_timeout=section.get(
            "close_removed_timeout", _number(0), defaults.close_removed_timeout),
        max_files=section.get("max_files", _int(1), defaults.max_files),
    )


def _journal(section: _Section) -> JournalConfig:
    return JournalConfig(journalctl=section.get("journalctl", _str, JournalConfig.journalctl))


def _logs(value: Any, name: str) -> tuple[Target, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list of {{path, topic}} entries")
    targets = []
    for i, entry in enumerate(value):
        try:
            targets.append(parse_entry(entry))
        except ValueError as exc:
            raise ConfigError(f"{name}[{i}]: {exc}") from None
    return tuple(targets)


def _metrics(section: _Section) -> tuple[str, int] | None:
    return section.get("listen", _endpoint, None)


def _name(value: Any, where: str) -> str:
    name = _str(value, where)
    if "/" in name or name.strip() != name:
        raise ConfigError(f"{where}: must not hold '/' or surrounding spaces, got {shown(name)}")
    return name


def _status(section: _Section) -> StatusConfig:
    defaults = StatusConfig()
    config = StatusConfig(
        prefix=section.get("prefix", _str, defaults.prefix),
        ttl=section.get("ttl", _int(2), defaults.ttl),
        interval=section.get("interval", _number(0.1), defaults.interval),
        progress_interval=section.get("progress_interval", _number(1),
                                      defaults.progress_interval),
    )
    if config.progress_interval < config.interval:
        raise ConfigError(f"{section.field('progress_interval')}: must be at least "
                          f"{section.field('interval')} ({config.interval:g}): counters are "
                          f"written at most as often as changes")
    return config


def _log(section: _Section) -> LogConfig:
    return LogConfig(format=section.get("format", _one_of(LOG_FORMATS), "text"),
                     level=section.get("level", _one_of(LOG_LEVELS), "info"))


def parse_config(data: Any, base_dir: Path) -> Config:
    """Validate a parsed YAML document; relative paths are taken from base_dir."""
    root = _Section(data, "")
    sections = {name: _Section(root.get(name, _as_is, None), name)
                for name in ("agent", "etcd", "kafka", "files", "journal", "metrics", "status",
                             "log")}
    name = sections["agent"].get("name", _name, socket.gethostname())
    state_dir = _resolved(Path(root.get("state_dir", _str, "state")), base_dir)
    config = Config(
        etcd=_etcd(sections["etcd"], base_dir, name),
        kafka=_kafka(sections["kafka"], base_dir),
        name=name,
        status=_status(sections["status"]),
        log=_log(sections["log"]),
        files=_files(sections["files"]),
        journal=_journal(sections["journal"]),
        logs=root.get("logs", _logs, ()),
        allowed_paths=root.get("allowed_paths", _list_of(_allowed_glob), DEFAULT_ALLOWED_PATHS),
        state_dir=state_dir,
        metrics_listen=_metrics(sections["metrics"]),
    )
    for index, target in enumerate(config.logs):
        try:
            check_allowed(target, config.allowed_paths)
        except ValueError as exc:
            raise ConfigError(f"logs[{index}]: {exc}") from None
    _check_transactional_id(config, sections["agent"])
    unknown = root.unknown() + [w for s in sections.values() for w in s.unknown()]
    return replace(config, warnings=tuple(unknown))


def _allowed_glob(value: Any, name: str) -> str:
    text = _str(value, name)
    if not text.startswith("/"):
        raise ConfigError(f"{name}: must be an absolute glob, got {text!r}")
    try:
        compile_glob(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return text


def _yaml_error(exc: yaml.YAMLError) -> str:
    """':line:column: not valid YAML: problem', without PyYAML's snippet of the line,
    which could echo a password."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def load_config(path: str | os.PathLike, strict: bool = False) -> Config:
    """Read and validate the file; strict turns unknown settings into errors."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path.absolute()}: no such file; run from the folder that holds "
                          f"config.yaml, or name it with --config PATH") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{_yaml_error(exc)}") from None
    try:
        config = parse_config(data, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if strict and config.warnings:
        raise ConfigError(f"{path}: " + "; ".join(config.warnings))
    _warn_readable_secret(path, data)
    return config


def _warn_readable_secret(path: Path, data: dict) -> None:
    """An inline secret in a file that every user may read: say so, naming the field."""
    inline = [f"{section}.{key}" for section, key in (("etcd", "password"),
                                                      ("kafka", "sasl_password"))
              if isinstance(data.get(section), dict) and data[section].get(key) is not None]
    if inline and path.stat().st_mode & stat.S_IROTH:
        log.warning("%s holds %s and is readable by every user: chmod 0640 it, or use "
                    "%s_file / %s_env", path, " and ".join(inline), inline[0], inline[0])

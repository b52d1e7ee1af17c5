"""The choice of Kafka client: the one place that knows both client modules.

`sink` is the interface and imports no client; `sink_kafka_python` and
`sink_confluent` each implement it with their own library. The optional client is
imported only when a config names it, and a library that is not installed is a config
error naming the command that installs it, so a reload to it keeps the running config.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from logship.errors import ConfigError, SinkError
from logship.netprobe import tcp_failure
from logship import transaction
from logship.transaction import TransactionalSink, transactional_id

if TYPE_CHECKING:
    from logship.config import KafkaConfig
    from logship.sink import OnError, Sink

# kafka.client -> (the module implementing the sink, the library it needs, its PyPI name)
CLIENT_MODULES = {
    "kafka-python": ("logship.sink_kafka_python", "kafka", "kafka-python"),
    "confluent-kafka": ("logship.sink_confluent", "confluent_kafka", "confluent-kafka"),
}


def install_hint(package: str) -> str:
    """The command that installs a package into the Python environment running logship
    (a wheel install has no extras of its own on PyPI: the name logship is taken there)."""
    return f"{sys.executable} -m pip install {package}"


def client_module(config: KafkaConfig) -> ModuleType:
    """The chosen client's sink module; ConfigError when its library is not installed."""
    module, library, package = CLIENT_MODULES[config.client]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != library:
            raise
        raise ConfigError(f"kafka.client: {config.client} is not installed in this Python "
                          f"environment; install it with `{install_hint(package)}`, or set "
                          f"kafka.client: kafka-python") from None


def open_sink(config: KafkaConfig, host: bytes, on_error: OnError, name: str) -> Sink:
    """The configured client's sink; with exactly-once, its records in transactions as
    the agent `name`."""
    module = client_module(config)
    if not config.exactly_once:
        return module.open_sink(config, host, on_error)
    sink = module.open_sink(config, host, on_error, transactional_id(name))
    return TransactionalSink(sink, module.transactions(sink), name)


def check_settings(config: KafkaConfig) -> None:
    """Validate that the client can be loaded and `kafka.producer` for it (ConfigError
    naming the field)."""
    client_module(config).check_producer_settings(config)


def reach_broker(config: KafkaConfig, broker: str, timeout: float) -> str:
    """`logship check --connect`: what the broker answered, or SinkError with the cause."""
    host, _, port = broker.rpartition(":")
    cause = tcp_failure(host, int(port))
    if cause is not None:
        raise SinkError(cause)
    return client_module(config).reach_broker(config, broker, timeout)


def check_transactions(config: KafkaConfig, name: str, timeout: float) -> str:
    """`logship check --connect` at exactly-once: the brokers take transactions."""
    return transaction.check_transactions(client_module(config), config, name, timeout)


def check_positions(config: KafkaConfig, name: str, timeout: float) -> str:
    """`logship check --connect` at exactly-once: the offsets topic is readable, writable."""
    return transaction.check_positions(client_module(config), config, name, timeout)

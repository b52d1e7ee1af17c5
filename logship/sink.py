"""The only importer of kafka: one shared producer and the agent-wide in-flight budget.

kafka-python has no memory cap of its own, so the budget counts line bytes sent and
not yet acknowledged; workers stop reading while it is spent. A record is one line:
value = the line, key = the file's path, headers = path, host, offset.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kafka import KafkaProducer
from kafka.errors import (KafkaError, KafkaTimeoutError, MessageSizeTooLargeError,
                          RecordListTooLargeError)
from kafka.producer.future import FutureRecordMetadata

from logship.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from logship.config import KafkaConfig

log = logging.getLogger(__name__)

Future = FutureRecordMetadata

MANAGED = {
    "bootstrap_servers": "kafka.bootstrap_servers",
    "api_version": "kafka.api_version",
    "max_block_ms": "kafka.max_block_ms",
    "max_request_size": "kafka.max_request_size",
    "acks": "nothing: logship always uses acks=all",
    "key_serializer": "nothing: keys are the file paths",
    "value_serializer": "nothing: values are the lines",
}
DEFAULTS = {"linger_ms": 5, "batch_size": 256 * 1024}


def check_producer_settings(settings: dict[str, Any], field: str) -> None:
    """Refuse settings kafka-python does not know, and those logship manages itself."""
    for name in settings:
        if name in MANAGED:
            raise ConfigError(f"{field}.{name}: managed by logship; set {MANAGED[name]}")
        if name not in KafkaProducer.DEFAULT_CONFIG:
            raise ConfigError(f"{field}.{name}: not a kafka-python producer setting")


def is_too_large(error: BaseException | None) -> bool:
    return isinstance(error, (MessageSizeTooLargeError, RecordListTooLargeError))


class InFlightBudget:
    """Agent-wide bytes sent and not acknowledged; checked once per batch, not per line."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def has_room(self) -> bool:
        return self.used < self.limit

    def take(self, nbytes: int) -> None:
        with self._lock:
            self.used += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


@dataclass
class Sent:
    """What one send() took: `count` lines; those at the indices in `skipped` were too
    large to send, every other one has its future, in order."""

    generation: int
    futures: list[Future] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    count: int = 0
    unavailable: str | None = None


@dataclass
class Resent:
    delivered: int = 0
    too_large: int = 0


class Sink:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.budget = InFlightBudget(config.buffer_bytes)
        self._host = socket.gethostname().encode()
        self._lock = threading.Lock()
        self._producer = self._new_producer()
        self._generation = 0
        self._isolation: KafkaProducer | None = None

    def _new_producer(self, **overrides: Any) -> KafkaProducer:
        config = self.config
        settings = {**DEFAULTS, **dict(config.producer), **overrides}
        try:
            return KafkaProducer(
                bootstrap_servers=list(config.bootstrap_servers),
                api_version=tuple(int(p) for p in config.api_version.split(".")),
                acks="all",
                max_block_ms=config.max_block_ms,
                max_request_size=config.max_request_size,
                **settings,
            )
        except (KafkaError, ValueError, TypeError, AssertionError) as exc:
            raise ConfigError(f"kafka: cannot create the producer: {exc}") from None

    def send(self, topic: str, key: bytes, lines: Sequence[bytes],
             offsets: Sequence[int]) -> Sent:
        """Send lines in order, stopping early when Kafka cannot take records now (no
        metadata within max_block_ms): the caller keeps the rest and tries again."""
        return self._produce(self._producer, Sent(self._generation), topic, key, lines, offsets)

    def _produce(self, producer: KafkaProducer, result: Sent, topic: str, key: bytes,
                 lines: Sequence[bytes], offsets: Sequence[int]) -> Sent:
        send = producer.send
        path_header = ("path", key)
        host_header = ("host", self._host)
        try:
            for line, offset in zip(lines, offsets):
                try:
                    result.futures.append(send(topic, value=line, key=key, headers=[
                        path_header, host_header, ("offset", b"%d" % offset)]))
                except MessageSizeTooLargeError:
                    result.skipped.append(result.count)
                result.count += 1
        except KafkaTimeoutError as exc:
            result.unavailable = f"Kafka unavailable: {exc}"
        except KafkaError as exc:
            raise SinkError(f"topic={topic}: send failed: {exc}") from None
        return result

    def recover(self, generation: int) -> None:
        """A record the broker refused as too large leaves an idempotent kafka-python
        producer in a fatal state that fails every later record: replace it, once per
        generation however many workers report it."""
        with self._lock:
            if generation != self._generation:
                return
            old, self._producer = self._producer, self._new_producer()
            self._generation += 1
        log.warning("Kafka refused a record as too large; producer rebuilt (broker limit "
                    "below kafka.max_request_size?)")
        old.close(timeout=0)

    def resend_alone(self, topic: str, key: bytes, lines: Sequence[bytes],
                     offsets: Sequence[int], timeout: float) -> Resent:
        """Resend through a producer without idempotence, one request in flight: there
        kafka-python splits a refused batch down to the one record that is too large,
        and only that record fails. Blocks until every record is settled."""
        with self._lock:
            if self._isolation is None:
                self._isolation = self._new_producer(
                    enable_idempotence=False, max_in_flight_requests_per_connection=1,
                    linger_ms=0)
            producer = self._isolation
        sent = self._produce(producer, Sent(self._generation), topic, key, lines, offsets)
        if sent.unavailable:
            raise SinkError(f"topic={topic}: resend failed: {sent.unavailable}")
        producer.flush(timeout=timeout)
        resent = Resent(too_large=len(sent.skipped))
        for future in sent.futures:
            error = future.exception if future.is_done else KafkaTimeoutError("not settled")
            if error is None:
                resent.delivered += 1
            elif is_too_large(error):
                resent.too_large += 1
            else:
                raise SinkError(f"topic={topic}: resend failed: {error}")
        return resent

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError:
            log.warning("Kafka did not acknowledge everything within %.0fs", timeout)

    def close(self, timeout: float) -> None:
        for producer in (self._producer, self._isolation):
            if producer is None:
                continue
            try:
                producer.close(timeout=timeout)
            except KafkaError as exc:
                log.warning("closing the Kafka producer: %s", exc)

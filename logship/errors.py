"""Errors that carry an operator-facing message and are logged without a traceback."""


class LogshipError(Exception):
    """An expected failure: bad input or an unavailable service, not a bug."""


class ConfigError(LogshipError):
    """config.yaml is unreadable or invalid; the message names the field."""


class SpecError(LogshipError):
    """An etcd value is rejected as a whole (not JSON, not an array)."""


class SourceError(LogshipError):
    """A followed path cannot be read (not a regular file, not allowed, unreadable)."""


class SinkError(LogshipError):
    """Kafka refused or failed to acknowledge records."""


class TopicRefused(SinkError):
    """Kafka refuses one topic (an invalid or colliding name, a topic policy, an ACL)
    while it takes the others: only the entries of that topic are held."""


class EtcdUnavailable(LogshipError):
    """No configured etcd endpoint answered."""

"""The only importer of etcd3: connect with failover, read, watch from a revision.

etcd3 0.12 neither re-creates a watch after the server restarts nor backs off while it
is down (its watch thread spins at full CPU). So a session is disposable: any error
closes its client, which ends etcd3's watch thread, and the caller backs off and opens
a new session against the next endpoint.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

# gRPC's C core writes its own lines to stderr (handshake failures, "Corruption
# detected"); the agent logs each failure once, with the endpoint and the cause.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import etcd3  # noqa: E402  (reads GRPC_VERBOSITY when imported)
import etcd3.exceptions  # noqa: E402
import grpc  # noqa: E402
import grpc._common  # noqa: E402

from logship.config import EtcdConfig  # noqa: E402
from logship.errors import EtcdUnavailable  # noqa: E402
from logship.netprobe import TlsFiles, endpoint_failure, speaks_tls  # noqa: E402
from logship.supervisor import Backoff  # noqa: E402

log = logging.getLogger(__name__)

ETCD_ERRORS = (etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError)
CONNECTION_ERRORS = (etcd3.exceptions.ConnectionFailedError,
                     etcd3.exceptions.ConnectionTimeoutError)


RECONNECT_CAP = 5.0
AGENT_GRPC_WAIT = 1.0


def wake_grpc_waits_less() -> None:
    """For `logship run`. gRPC's Python calls wait in slices of 0.1 s, so that a signal
    handler on the main thread runs within that time. The agent handles signals on its
    main thread and makes no gRPC call there: for its other threads the slices are pure
    cost, ten wake-ups a second of the etcd watch thread alone, a seventh of an idle
    agent's CPU. A call's answer, its cancellation and its timeout still end the wait at
    once; only the slice is longer."""
    grpc._common.MAXIMUM_WAIT_TIMEOUT = AGENT_GRPC_WAIT


def reconnect_backoff() -> Backoff:
    """Between attempts to reach etcd: 0.5 s doubling to 5 s, so that a returning etcd is
    used within seconds while one that stays down costs one attempt per 5 s."""
    return Backoff(base=0.5, cap=RECONNECT_CAP, stable_after=30.0)


@dataclass(frozen=True)
class Claim:
    """What a conditional put found: written (at `mod_revision`), or the key held by a
    write it did not expect (`value` and `lease` of that write; value None: absent)."""

    written: bool
    mod_revision: int = 0
    value: bytes | None = None
    lease: int = 0


@dataclass(frozen=True)
class KeyChange:
    """The key's value after a watch event; None when the key was deleted."""

    value: bytes | None


WAKE = object()
"""Put on a session's queue to wake its reader, e.g. when it is asked to stop."""


class EtcdSession:
    """One client on one endpoint. Watch events and errors arrive on `events`."""

    def __init__(self, client: Any, host: str, port: int, tls: TlsFiles | None) -> None:
        self._client = client
        self._host, self._port, self._tls = host, port, tls
        self.endpoint = f"{host}:{port}"
        self.events: queue.Queue[KeyChange | BaseException | object] = queue.Queue()

    def read(self, key: str) -> tuple[bytes | None, int]:
        """The value (None if absent) and the revision it was read at."""
        response = self._client.get_response(key)
        value = response.kvs[0].value if response.kvs else None
        return value, response.header.revision

    def watch(self, key: str, start_revision: int) -> None:
        self._client.add_watch_callback(key, self._on_watch, start_revision=start_revision)

    def _on_watch(self, response: Any) -> None:
        """Runs on etcd3's watch thread: only hand over, never block."""
        if isinstance(response, BaseException):
            self.events.put(response)
            return
        for event in response.events[-1:]:
            deleted = isinstance(event, etcd3.events.DeleteEvent)
            self.events.put(KeyChange(None if deleted else event.value))

    def probe(self) -> None:
        """A cheap call with a timeout: notices a server that hangs without an error."""
        self._client.status()

    def version(self) -> str:
        return self._client.status().version

    def read_prefix(self, prefix: str) -> list[bytes]:
        """Every value under the prefix, in key order."""
        return [value for value, _meta in self._client.get_prefix(prefix, sort_order="ascend")]

    def put(self, key: str, value: bytes, lease: Any = None) -> None:
        self._client.put(key, value, lease=lease)

    def put_if_unmoved(self, key: str, value: bytes, lease: Any, mod_revision: int) -> Claim:
        """Put on the lease only if the key was last written at `mod_revision` (0: only if
        it is absent), in one etcd transaction; otherwise say who holds it."""
        ops = self._client.transactions
        written, responses = self._client.transaction(
            compare=[ops.mod(key) == mod_revision], success=[ops.put(key, value, lease)],
            failure=[ops.get(key)])
        if written:
            return Claim(True, responses[0].response_put.header.revision)
        if not responses[0]:
            return Claim(False)
        found, meta = responses[0][0]
        return Claim(False, meta.mod_revision, found, meta.lease_id)

    def lease(self, ttl: int) -> Any:
        """A lease the caller keeps alive with refresh(); its keys go when it expires."""
        return self._client.lease(ttl)

    def refresh(self, lease: Any) -> None:
        """etcd3 answers an expired lease with an empty keep-alive reply (TTL 0), not an
        error: that is an error here, so the caller grants a new one."""
        replies = lease.refresh()
        if not replies or replies[0].TTL <= 0:
            raise EtcdUnavailable(f"lease {lease.id:x} expired")

    def revoke(self, lease: Any) -> None:
        lease.revoke()

    def delete(self, key: str) -> bool:
        """True when the key existed."""
        return bool(self._client.delete(key))

    def explain(self, exc: BaseException) -> str:
        return explain(self._host, self._port, self._tls, exc)

    def close(self) -> None:
        try:
            self._client.close()
        except ETCD_ERRORS:
            pass


def _quiet_closed_watch_thread(args: threading.ExceptHookArgs) -> None:
    """etcd3 0.12's watch thread has no stop: it ends by failing on its closed channel."""
    thread = args.thread
    if thread is not None and thread.name.startswith("etcd3_watch_") \
            and isinstance(args.exc_value, ValueError):
        return
    _default_excepthook(args)


_default_excepthook = threading.excepthook


class EtcdSource:
    """Opens sessions, trying the configured endpoints from the last one that worked."""

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._preferred = 0
        self._tls = TlsFiles(config.ca_cert, config.cert_cert, config.cert_key) \
            if config.ca_cert else None
        threading.excepthook = _quiet_closed_watch_thread

    def connect(self) -> EtcdSession:
        endpoints = self._config.endpoints
        errors = []
        for step in range(len(endpoints)):
            index = (self._preferred + step) % len(endpoints)
            host, port = endpoints[index]
            try:
                session = self._open(host, port)
            except ETCD_ERRORS as exc:
                errors.append(explain(host, port, self._tls, exc))
                continue
            self._preferred = index
            return session
        raise EtcdUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    def _open(self, host: str, port: int) -> EtcdSession:
        cfg = self._config
        client = etcd3.client(host=host, port=port, timeout=cfg.timeout, ca_cert=cfg.ca_cert,
                              cert_key=cfg.cert_key, cert_cert=cfg.cert_cert,
                              user=cfg.user, password=cfg.password)
        session = EtcdSession(client, host, port, self._tls)
        try:
            session.probe()
        except ETCD_ERRORS:
            session.close()
            raise
        return session


def explain(host: str, port: int, tls: TlsFiles | None, exc: BaseException) -> str:
    """'host:port: cause'. etcd3 says only "etcd connection failed", whether the port is
    closed or the TLS handshake failed, so for those the endpoint is probed."""
    cause = None
    if isinstance(exc, CONNECTION_ERRORS):
        cause = endpoint_failure(host, port, tls)
        if cause is None and tls is None and speaks_tls(host, port):
            cause = "the server speaks TLS: set etcd.ca_cert (and https:// in etcd.endpoints)"
    return f"{host}:{port}: {cause or describe(exc)}"


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__

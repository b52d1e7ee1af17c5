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
from typing import Any, Iterator

# gRPC's C core writes its own lines to stderr (handshake failures, "Corruption
# detected"); the agent logs each failure once, with the endpoint and the cause.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import etcd3  # noqa: E402  (reads GRPC_VERBOSITY when imported)
import etcd3.etcdrpc  # noqa: E402
import etcd3.exceptions  # noqa: E402
import etcd3.utils  # noqa: E402
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
TRANSLATED = {grpc.StatusCode.UNAVAILABLE: etcd3.exceptions.ConnectionFailedError,
              grpc.StatusCode.DEADLINE_EXCEEDED: etcd3.exceptions.ConnectionTimeoutError}


def translated(exc: grpc.RpcError) -> BaseException:
    """The error as etcd3's own calls raise it, for a call that etcd3 does not make."""
    kind = TRANSLATED.get(exc.code())
    return exc if kind is None else kind()


RECONNECT_CAP = 5.0
AGENT_GRPC_WAIT = 1.0
PAGE_KEYS = 100
"""Keys per range read of a prefix: 100 status documents of at most 16 KiB stay well
inside gRPC's 4 MiB message limit; a page refused as too large is read again halved."""


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
    """A key's value after a watch event; None when the key was deleted."""

    key: bytes
    value: bytes | None


@dataclass(frozen=True)
class Page:
    """Keys and values of one range read, all pages of a scan at one `revision`."""

    items: list[tuple[bytes, bytes]]
    revision: int


WAKE = object()
"""Put on a session's queue to wake its reader, e.g. when it is asked to stop."""


class EtcdSession:
    """One client on one endpoint. Watch events and errors arrive on `events`."""

    def __init__(self, client: Any, host: str, port: int, tls: TlsFiles | None) -> None:
        self._client = client
        self._host, self._port, self._tls = host, port, tls
        self.endpoint = f"{host}:{port}"
        self.events: queue.Queue[KeyChange | BaseException | object] = queue.Queue()
        self._keepalives: KeepAliveStream | None = None

    def read(self, key: str) -> tuple[bytes | None, int]:
        """The value (None if absent) and the revision it was read at."""
        response = self._client.get_response(key)
        value = response.kvs[0].value if response.kvs else None
        return value, response.header.revision

    def watch(self, key: str, start_revision: int) -> None:
        """A key's changes: only its latest value counts, so of the events of one
        response only the last is handed on."""
        self._client.add_watch_callback(key, lambda response: self._on_watch(response, -1),
                                        start_revision=start_revision)

    def watch_prefix(self, prefix: str, start_revision: int) -> None:
        """Every change of every key under the prefix."""
        self._client.add_watch_prefix_callback(
            prefix, lambda response: self._on_watch(response, 0), start_revision=start_revision)

    def _on_watch(self, response: Any, first: int) -> None:
        """Runs on etcd3's watch thread: only hand over, never block."""
        if isinstance(response, BaseException):
            self.events.put(response)
            return
        for event in response.events[first:]:
            deleted = isinstance(event, etcd3.events.DeleteEvent)
            self.events.put(KeyChange(event.key, None if deleted else event.value))

    def probe(self) -> None:
        """A cheap call with a timeout: notices a server that hangs without an error."""
        self._client.status()

    def version(self) -> str:
        return self._client.status().version

    def pages(self, prefix: str) -> Iterator[Page]:
        """Every key under the prefix, in key order, in pages of PAGE_KEYS keys read at
        the revision of the first one: one consistent snapshot, and no response near
        gRPC's or etcd's message limits however many keys there are. Watch from the
        revision + 1 to miss no change after it."""
        start = prefix.encode()
        end = etcd3.utils.increment_last_byte(start)
        limit, revision = PAGE_KEYS, 0
        while True:
            try:
                response = self._range(start, end, limit, revision)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or limit == 1:
                    raise
                limit //= 2
                continue
            revision = response.header.revision
            items = [(kv.key, kv.value) for kv in response.kvs]
            yield Page(items, revision)
            if not response.more or not items:
                return
            start = items[-1][0] + b"\0"

    def _range(self, start: bytes, end: bytes, limit: int, revision: int) -> Any:
        """etcd3 0.12 takes a limit and a revision but never sends them."""
        client = self._client
        request = etcd3.etcdrpc.RangeRequest(key=start, range_end=end, limit=limit,
                                             revision=revision)
        try:
            return client.kvstub.Range(request, client.timeout,
                                       credentials=client.call_credentials,
                                       metadata=client.metadata)
        except grpc.RpcError as exc:
            raise translated(exc) from None

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
        """etcd answers a keep-alive of an expired lease with a TTL of 0, not an error:
        that is an error here, so the caller grants a new one."""
        if self._keepalives is None:
            self._keepalives = KeepAliveStream(self._client)
        if self._keepalives.renew(lease.id) <= 0:
            raise EtcdUnavailable(f"lease {lease.id:x} expired")

    def revoke(self, lease: Any) -> None:
        lease.revoke()

    def delete(self, key: str) -> bool:
        """True when the key existed."""
        return bool(self._client.delete(key))

    def explain(self, exc: BaseException) -> str:
        return explain(self._host, self._port, self._tls, exc)

    def close(self) -> None:
        if self._keepalives is not None:
            self._keepalives.close()
        try:
            self._client.close()
        except ETCD_ERRORS:
            pass


class KeepAliveStream:
    """One LeaseKeepAlive stream for a session's keep-alives. etcd3's own refresh opens a
    stream per keep-alive, which cost etcd 370 µs of CPU each against 130 µs on a stream
    kept open (measured here, etcd 3.4): with 10,000 agents the difference is half a
    core. The answers are read on a thread this object owns; close() cancels the call,
    which ends it."""

    def __init__(self, client: Any) -> None:
        self._timeout = client.timeout
        self._requests: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[Any] = queue.Queue()
        self._call = client.leasestub.LeaseKeepAlive(iter(self._requests.get, None),
                                                     credentials=client.call_credentials,
                                                     metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, name="etcd-keepalive", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                self._answers.put(answer)
        except grpc.RpcError as exc:
            self._answers.put(exc)

    def renew(self, lease_id: int) -> int:
        """The lease's TTL after the keep-alive; raises as etcd3's calls do."""
        self._requests.put(etcd3.etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
        try:
            answer = self._answers.get(timeout=self._timeout)
        except queue.Empty:
            raise etcd3.exceptions.ConnectionTimeoutError from None
        if isinstance(answer, grpc.RpcError):
            raise translated(answer) from None
        return answer.TTL

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(self._timeout)


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

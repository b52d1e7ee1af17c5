"""Why an endpoint cannot be reached, in the words an operator acts on.

The clients' own errors rarely say: etcd3 raises "etcd connection failed" for a refused
port and for a rejected client certificate alike, and the Kafka clients report a
timeout. So after a client fails, the agent connects itself: TCP first, then the TLS
handshake with the same CA and client certificate the client was given.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

PROBE_TIMEOUT = 1.0
ALERT_WAIT = 0.5
CERTIFICATE_ALERTS = ("CERTIFICATE", "UNKNOWN_CA")


@dataclass(frozen=True)
class TlsFiles:
    """What a client verifies the server with and, optionally, presents to it."""

    ca: str | None            # None: the system's CAs
    cert: str | None = None
    key: str | None = None


def endpoint_failure(host: str, port: int, tls: TlsFiles | None) -> str | None:
    """Why host:port cannot be reached (TCP, then TLS when configured), or None."""
    return tcp_failure(host, port) or (tls_failure(host, port, tls) if tls else None)


def speaks_tls(host: str, port: int) -> bool:
    """Whether the server completes (or starts) a TLS handshake: a client without TLS
    settings that fails against it has the cause in its own config."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), port), PROBE_TIMEOUT) as raw, \
                context.wrap_socket(raw):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in (exc.reason or "")
    except OSError:
        return False


def tcp_failure(host: str, port: int) -> str | None:
    """Why a TCP connection to host:port fails, or None when it succeeds."""
    try:
        socket.create_connection((host.strip("[]"), port), PROBE_TIMEOUT).close()
    except socket.gaierror:
        return "name does not resolve"
    except socket.timeout:
        return "connection timed out"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return None


def tls_failure(host: str, port: int, tls: TlsFiles) -> str | None:
    """Why a TLS session with host:port fails, or None. A server that refuses the client
    certificate says so in an alert after the handshake (TLS 1.3), hence the short read."""
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        return f"TLS: cannot use {_files(tls)}: {_reason(exc)}"
    try:
        with socket.create_connection((host.strip("[]"), port), PROBE_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=host.strip("[]")) as conn:
            conn.settimeout(ALERT_WAIT)
            conn.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return (f"TLS: the server's certificate is not trusted with {tls.ca or 'the system CAs'}: "
                f"{exc.verify_message}")
    except ssl.SSLError as exc:
        return _refused(exc, tls)
    except (socket.timeout, ConnectionError):
        return None
    except OSError as exc:
        return f"TLS: {(exc.strerror or str(exc)).lower()}"
    return None


def _refused(exc: ssl.SSLError, tls: TlsFiles) -> str:
    reason = exc.reason or ""
    if "WRONG_VERSION_NUMBER" in reason:
        return "TLS: the server does not speak TLS on this port"
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
        return "TLS: the server closed the connection in the handshake (is this port TLS?)"
    if "ALERT" in reason and any(word in reason for word in CERTIFICATE_ALERTS):
        if tls.cert is None:
            return f"TLS: the server wants a client certificate and none is set ({_reason(exc)})"
        return f"TLS: the server refused the client certificate {tls.cert} ({_reason(exc)})"
    return f"TLS: {_reason(exc)}"


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return reason.lower().replace("_", " ") if reason else (exc.strerror or str(exc))


def _files(tls: TlsFiles) -> str:
    return ", ".join(f for f in (tls.ca, tls.cert, tls.key) if f) or "the system CAs"

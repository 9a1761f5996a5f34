"""The socket shell around the PostgreSQL session state machine.

One thread per connection with a blocking socket: it reads, parses, hands the
messages of one read to `PgSession.receive` (which runs the SQL and may block on
the write lock or on durability) and sends what it returns. A statement costs one
thread wake-up in this process; an event loop with a worker pool cost three
(loop, worker, loop), and under load each wake-up waits for a core. TLS is the
ssl module's socket (after SSLRequest), not a memory BIO driven from Python.
SSLRequest, GSSENCRequest ('N') and CancelRequest are handled here, before a
session exists.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import logging
import os
import secrets
import socket
import ssl
import tempfile
import threading
import time
from typing import Callable

from sixfold.nodes.compute.pgwire import messages as M
from sixfold.nodes.compute.pgwire.catalog import Catalog
from sixfold.nodes.compute.pgwire.protocol import Config, PgSession, cancel_running

log = logging.getLogger("sixfold.pgwire")

CONNECTIONS_MAX = 512
READ_BYTES = 256 * 1024
STARTUP_TIMEOUT_S = 30.0
STOP_WAIT_S = 5.0


def self_signed_context(host: str) -> ssl.SSLContext:
    """A TLS context with a certificate made now (EC P-256, valid for a year)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sixfold {host}")])
    now = dt.datetime.now(dt.timezone.utc)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key, hashes.SHA256()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class PgServer:
    """Serves PostgreSQL protocol v3 on `listen` for the engine `engine_of()` returns now."""

    def __init__(self, listen: str, config: Config, engine_of: Callable[[], object],
                 is_reader: Callable[[], bool], tls: ssl.SSLContext | None = None) -> None:
        self.host, port = listen.rsplit(":", 1)
        self.port = int(port)
        self.config = config
        self.config.port = self.port
        self.engine_of = engine_of
        self.is_reader = is_reader
        self.tls = tls
        self.catalog = Catalog()
        self.sessions: dict[int, PgSession] = {}
        self._connections: dict[threading.Thread, socket.socket] = {}   # each one's socket (TLS or not)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor = threading.Thread(target=self._accept, name="pgwire-accept", daemon=True)
        self._stopping = False
        self._pids = itertools.count(secrets.randbelow(1 << 20) + 1000)

    def start(self) -> None:
        """Binds and serves; raises OSError when the address cannot be bound."""
        self._listener = socket.create_server((self.host, self.port), backlog=128)
        self._acceptor.start()
        log.info("PostgreSQL protocol on %s:%d (%s, TLS %s)", self.host, self.port,
                 "trust" if self.config.verifier is None else "SCRAM-SHA-256", "on" if self.tls else "off")

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
            except OSError:
                pass
            self._listener.close()
        deadline = time.monotonic() + STOP_WAIT_S   # for all threads together, not each
        if self._acceptor.is_alive():
            self._acceptor.join(STOP_WAIT_S)
        with self._lock:
            connections = dict(self._connections)
        for sock in connections.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)   # wakes the connection's blocked recv() or sendall()
            except OSError:
                pass
        for thread in connections:   # (one inside a statement ends when the statement does)
            thread.join(max(0.0, deadline - time.monotonic()))
        for session in list(self.sessions.values()):
            session.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._stopping:
                    return
                log.exception("accepting a PostgreSQL connection failed")
                continue
            with self._lock:
                if len(self._connections) >= CONNECTIONS_MAX:
                    full = True
                else:
                    full = False
                    thread = threading.Thread(target=self._serve, args=(sock,), name="pg-conn", daemon=True)
                    self._connections[thread] = sock
            if full:
                try:
                    sock.sendall(M.error_response(M.PgError("53300", "sorry, too many clients already", "FATAL")))
                except OSError:
                    pass
                sock.close()
                continue
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        session: PgSession | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(STARTUP_TIMEOUT_S)
            parser = M.FrontendParser()
            session, sock, leftover = self._start(sock, parser)
            if session is None:
                return
            sock.settimeout(None)
            pending = parser.feed(leftover) if leftover else []
            while not session.closed:
                if not pending:
                    data = sock.recv(READ_BYTES)
                    if not data:
                        break
                    pending = parser.feed(data)
                    if not pending:
                        continue
                if session.engine is not self.engine_of():
                    sock.sendall(M.error_response(M.PgError(
                        "57P01", "terminating connection: this instance changed role (failover); reconnect",
                        "FATAL")))
                    break
                out = session.receive(pending)
                pending = []
                if out:
                    sock.sendall(out)
        except M.ProtocolViolation as exc:
            self._send_quietly(sock, M.error_response(M.PgError("08P01", f"protocol violation: {exc}", "FATAL")))
        except (ssl.SSLError, OSError):   # (timeouts and resets included)
            pass
        except Exception:
            log.exception("PostgreSQL connection failed")
        finally:
            if session is not None:
                self.sessions.pop(session.pid, None)
                session.close()
            with self._lock:
                self._connections.pop(threading.current_thread(), None)
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _send_quietly(sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    def _start(self, sock: socket.socket, parser: M.FrontendParser
               ) -> tuple[PgSession | None, socket.socket, bytes]:
        """Startup phase: SSL/GSS negotiation, cancel requests, then the startup message.
        Returns the session (None: nothing more to do), the socket (TLS-wrapped after
        SSLRequest) and the bytes read past the startup message."""
        tls_done = False
        while True:
            msgs: list = []
            while not msgs:
                data = sock.recv(READ_BYTES)
                if not data:
                    return None, sock, b""
                msgs = parser.feed(data)
            msg = msgs[0]
            if isinstance(msg, M.SSLRequest):
                if tls_done:
                    raise M.ProtocolViolation("SSLRequest after TLS was set up")
                if parser.take_buffered():
                    raise M.ProtocolViolation("data after SSLRequest before the answer")
                if self.tls is None:
                    sock.sendall(b"N")
                    continue
                sock.sendall(b"S")
                sock = self.tls.wrap_socket(sock, server_side=True)   # the handshake, within the startup timeout
                with self._lock:
                    self._connections[threading.current_thread()] = sock
                tls_done = True
                continue
            if isinstance(msg, M.GSSEncRequest):
                sock.sendall(b"N")
                continue
            if isinstance(msg, M.CancelRequest):
                target = self.sessions.get(msg.pid)
                if target is not None and secrets.compare_digest(target.secret.to_bytes(4, "big"),
                                                                 msg.secret.to_bytes(4, "big")):
                    log.info("cancel request for session %d", msg.pid)
                    cancel_running(target)
                return None, sock, b""
            assert isinstance(msg, M.Startup)
            parser.expect_typed()
            pid = next(self._pids)
            session = PgSession(self.config, self.engine_of(), self.catalog, pid, secrets.randbits(32),
                                is_reader=self.is_reader())
            self.sessions[pid] = session
            out = session.receive([msg])
            sock.sendall(out)
            if session.closed:
                self.sessions.pop(pid, None)
                return None, sock, b""
            return session, sock, parser.take_buffered()

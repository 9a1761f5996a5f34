"""The asyncio shell around the PostgreSQL session state machine.

Its own thread and event loop (the volume's loop carries the quorum traffic and
must not wait behind a client). Per connection: read, parse, hand the messages
to `PgSession.receive` in a worker thread (SQL blocks), write what it returns.
SSLRequest (TLS with a self-signed certificate made at start), GSSENCRequest
('N') and CancelRequest are handled here, before a session exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from sixfold.nodes.compute.pgwire import messages as M
from sixfold.nodes.compute.pgwire.catalog import Catalog
from sixfold.nodes.compute.pgwire.protocol import Config, PgSession, cancel_running

log = logging.getLogger("sixfold.pgwire")

CONNECTIONS_MAX = 512
READ_BYTES = 256 * 1024
WORKER_THREADS = 64
STARTUP_TIMEOUT_S = 30.0


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
        self.executor = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="pg")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pgwire", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._next_pid = secrets.randbelow(1 << 20) + 1000

    def start(self) -> None:
        """Binds and serves; raises OSError when the address cannot be bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.host, self.port, reuse_address=True), self.loop)
        self._server = future.result(timeout=10)
        log.info("PostgreSQL protocol on %s:%d (%s, TLS %s)", self.host, self.port,
                 "trust" if self.config.verifier is None else "SCRAM-SHA-256", "on" if self.tls else "off")

    def stop(self) -> None:
        async def shutdown():
            if self._server is not None:
                self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        for session in list(self.sessions.values()):
            session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= CONNECTIONS_MAX:
            writer.write(M.error_response(M.PgError("53300", "sorry, too many clients already", "FATAL")))
            writer.close()
            return
        session: PgSession | None = None
        loop = asyncio.get_running_loop()
        try:
            parser = M.FrontendParser()
            session, leftover = await asyncio.wait_for(self._start(reader, writer, parser), STARTUP_TIMEOUT_S)
            if session is None:
                return
            pending = parser.feed(leftover) if leftover else []
            while not session.closed:
                if not pending:
                    data = await reader.read(READ_BYTES)
                    if not data:
                        break
                    pending = parser.feed(data)
                    if not pending:
                        continue
                engine = self.engine_of()
                if session.engine is not engine:
                    writer.write(M.error_response(M.PgError(
                        "57P01", "terminating connection: this instance changed role (failover); reconnect",
                        "FATAL")))
                    break
                out = await loop.run_in_executor(self.executor, session.receive, pending)
                pending = []
                if out:
                    writer.write(out)
                    await writer.drain()
        except M.ProtocolViolation as exc:
            writer.write(M.error_response(M.PgError("08P01", f"protocol violation: {exc}", "FATAL")))
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("PostgreSQL connection failed")
        finally:
            if session is not None:
                self.sessions.pop(session.pid, None)
                await loop.run_in_executor(self.executor, session.close)
            try:
                await writer.drain()
            except Exception:
                pass
            writer.close()

    async def _start(self, reader, writer, parser: M.FrontendParser) -> tuple[PgSession | None, bytes]:
        """Startup phase: SSL/GSS negotiation, cancel requests, then the startup message."""
        loop = asyncio.get_running_loop()
        tls_done = False
        while True:
            data = await reader.read(READ_BYTES)
            if not data:
                return None, b""
            msgs = parser.feed(data)
            while not msgs:
                more = await reader.read(READ_BYTES)
                if not more:
                    return None, b""
                msgs = parser.feed(more)
            msg = msgs[0]
            if isinstance(msg, M.SSLRequest):
                if tls_done:
                    raise M.ProtocolViolation("SSLRequest after TLS was set up")
                if parser.take_buffered():
                    raise M.ProtocolViolation("data after SSLRequest before the answer")
                if self.tls is None:
                    writer.write(b"N")
                    await writer.drain()
                    continue
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
                tls_done = True
                continue
            if isinstance(msg, M.GSSEncRequest):
                writer.write(b"N")
                await writer.drain()
                continue
            if isinstance(msg, M.CancelRequest):
                target = self.sessions.get(msg.pid)
                if target is not None and secrets.compare_digest(target.secret.to_bytes(4, "big"),
                                                                 msg.secret.to_bytes(4, "big")):
                    log.info("cancel request for session %d", msg.pid)
                    cancel_running(target)
                return None, b""
            assert isinstance(msg, M.Startup)
            parser.expect_typed()
            pid = self._next_pid
            self._next_pid += 1
            engine = self.engine_of()
            session = PgSession(self.config, engine, self.catalog, pid, secrets.randbits(32),
                                is_reader=self.is_reader())
            self.sessions[pid] = session
            out = await loop.run_in_executor(self.executor, session.receive, [msg])
            writer.write(out)
            await writer.drain()
            if session.closed:
                self.sessions.pop(pid, None)
                return None, b""
            return session, parser.take_buffered()

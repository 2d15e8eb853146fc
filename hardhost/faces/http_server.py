"""The HTTP server of `hardhost serve`: uvicorn, in a thread of its own beside the
scheduler, on a socket bound before anything starts (an address in use is exit 2, not a
service running without its API)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from hardhost.core.errors import UsageError

log = logging.getLogger(__name__)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}. Fix with: "
                         "http.listen naming a free port") from None
    sock.set_inheritable(True)
    return sock


def start(app: FastAPI, sock: socket.socket, *, tls_cert: Path | None,
          tls_key: Path | None) -> Callable[[], None]:
    """Serve `app` on `sock` from a thread; returns the function that stops it."""
    config = uvicorn.Config(app, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    def run() -> None:
        # A thread has no event loop of its own, and uvicorn installs no signal handlers
        # outside the main thread: SIGTERM stays the service's.
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name="http", daemon=True)
    thread.start()
    scheme = "https" if tls_cert else "http"
    host, port = sock.getsockname()[:2]
    log.info("API, /metrics and dashboard on %s://%s:%d", scheme,
             f"[{host}]" if ":" in host else host, port)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return stop

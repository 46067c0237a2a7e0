"""optuna-dashboard on loopback, for looking at a comparison's studies side by side.

The server is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``) behind a threading
``wsgiref`` server bound to 127.0.0.1 only: the dashboard can edit notes and delete studies, so it
is not exposed to the network. Port 0 picks a free port; the address printed is the real one.
"""

from __future__ import annotations

import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.storages import BaseStorage

HOST = "127.0.0.1"


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """The dashboard page fires several API requests at once; serve them concurrently."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - wsgiref's signature
        pass


def make_dashboard_server(storage: BaseStorage, port: int = 8080, *, quiet: bool = True) -> WSGIServer:
    """A ready (bound, not yet serving) dashboard server on loopback."""
    from optuna_dashboard import wsgi

    handler = _QuietHandler if quiet else WSGIRequestHandler
    return make_server(HOST, port, wsgi(storage), server_class=_ThreadingServer, handler_class=handler)


def dashboard_url(server: WSGIServer) -> str:
    return f"http://{HOST}:{server.server_port}/dashboard/"


def serve_in_thread(storage: BaseStorage, port: int = 0) -> tuple[WSGIServer, str]:
    """Serve in a background thread (scripts and tests); stop with ``server.shutdown()``."""
    server = make_dashboard_server(storage, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, dashboard_url(server)

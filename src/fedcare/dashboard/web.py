"""What the dashboard and the site console share: token check, headers, pages, serving.

Pages are small HTML shells; the browser script (``static/``, served by the app itself,
no CDN) fills them from the JSON API. A strict Content-Security-Policy allows only the
app's own scripts, styles and connections.
"""

from __future__ import annotations

import html
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fedcare.errors import ConfigError, FedcareError

__all__ = ["BackgroundServer", "add_common", "check_bind", "fast_json", "page", "serve"]

STATIC = Path(__file__).with_name("static")
COOKIE = "fedcare_token"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token.

    Raises
    ------
    ConfigError
        ``host`` is not a loopback address and no token (of at least 16 characters) was given.
    """
    if token is not None and len(token) < 16:
        raise ConfigError(
            "--token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not is_loopback(host) and token is None:
        raise ConfigError(
            f"refusing to serve on {host} without a token: anyone who can reach it would see the study; "
            "pass --token (or bind 127.0.0.1)"
        )


def add_common(app: FastAPI, token: str | None) -> None:
    """Security headers, the token check, static files and JSON errors on ``app``."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if token is not None and not path.startswith("/static/"):
            given = _given_token(request)
            if given is None:
                response: Response = _denied(path, 401, "a token is required (Authorization: Bearer TOKEN, or ?token=)")
            elif not secrets.compare_digest(given.encode(), token.encode()):
                response = _denied(path, 403, "wrong token")
            elif request.query_params.get("token") is not None and not path.startswith("/api/"):
                # a page opened with ?token=: keep it in an HttpOnly cookie, drop it from the address bar
                response = RedirectResponse(path, status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(FedcareError)
    async def fedcare_error(_request: Request, exc: FedcareError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _given_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def _denied(path: str, status: int, why: str) -> Response:
    if path.startswith("/api/"):
        return JSONResponse({"error": why}, status_code=status)
    return HTMLResponse(page("fedcare: access denied", f"<p class='error'>{html.escape(why)}</p>"), status_code=status)


def fast_json(content: Any) -> Response:
    """A JSON response encoded by :func:`json.dumps` directly.

    FastAPI's default encoder walks every value in Python first, which took seconds for
    the ~100,000 numbers of a 1,000-round run's curves; plain JSON values need no walk.
    """
    return Response(json.dumps(content, separators=(",", ":")), media_type="application/json")


def not_found(what: str) -> JSONResponse:
    """The API's 404: a JSON body naming what is unknown."""
    return JSONResponse({"error": what}, status_code=404)


def page(title: str, body: str, *, script: str | None = None, data: dict[str, str] | None = None) -> str:
    """An HTML page: our stylesheet, ``body``, and optionally one of our scripts (no inline code)."""
    attrs = "".join(f' data-{k}="{html.escape(v, quote=True)}"' for k, v in (data or {}).items())
    tag = f'<script src="/static/{script}" defer></script>' if script else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title><link rel='stylesheet' href='/static/dashboard.css'>"
        f"<script src='/static/charts.js' defer></script>{tag}</head>"
        f"<body{attrs}>{body}</body></html>"
    )


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


class BackgroundServer:
    """``app`` served by uvicorn on a daemon thread (beside ``fedcare server``, and in tests).

    Parameters
    ----------
    app : FastAPI
        The application.
    host : str
        Address to bind.
    port : int
        Port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="fedcare-dashboard")

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        """Start serving; return once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the dashboard could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        sockets: list[Any] = [s for srv in self.server.servers for s in srv.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)

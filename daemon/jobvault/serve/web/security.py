"""Who may read the dashboard: this user's browser, on this machine, and nothing else.

* **Loopback only.** The server binds 127.0.0.1 (`app.py`); no setting makes it listen on
  another interface.
* **A per-install secret.** A random token, created 0600 beside the database, must come with
  every request: in the URL once (`jobvault dashboard` opens `/?token=…`), which answers with
  an HttpOnly, SameSite=Strict cookie and a redirect to the same URL without it (so the token
  leaves the address bar and the history), then in that cookie. Another local user cannot read
  the file, and a web page on another origin can neither send the cookie (SameSite) nor guess
  the token. This is Jupyter's model.
* **The Host header** must name the server itself (127.0.0.1:PORT or localhost:PORT), so a
  page on a rebinding DNS name that resolves to 127.0.0.1 is refused (DNS rebinding).
* **Every answer** carries a Content-Security-Policy that allows nothing from another origin
  (scripts only from the server's own files, no eval, no inline script, no frames, no form
  posts elsewhere), `nosniff`, no referrer, and `no-store` for pages.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from jobvault.store.db import ensure_private_dir, umask

TOKEN_FILE = "dashboard.token"
COOKIE = "jobvault_dashboard"
# plotly.js sets inline styles while it draws (it cannot run under a strict style-src), so
# styles may be inline; every source is still this server alone, and scripts have no way in
# but the server's own files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_path(db: Path) -> Path:
    """Where the install's secret lives: beside the database, in its 0700 directory."""
    return db.expanduser().parent / TOKEN_FILE


def load_token(db: Path) -> str:
    """Read the install's secret, creating it (0600, 256 random bits) the first time."""
    path = token_path(db)
    ensure_private_dir(path.parent, db.expanduser().name)
    try:
        text = path.read_text().strip()
        if len(text) >= 32:
            return text
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    with umask(0o077):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)  # atomic: a reader sees the old secret or the new, never half
    return token


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})


def _refusal(status: int, title: str, text: str) -> web.Response:
    body = (
        f"<!doctype html><meta charset=utf-8><title>jobvault: {title}</title>"
        "<body style='font:16px system-ui;margin:3rem;max-width:40rem'>"
        f"<h1>{title}</h1><p>{text}</p></body>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def guard(token: str, port: Callable[[], int]) -> web.middleware:  # type: ignore[valid-type]
    """The middleware that checks the Host header and the secret on every request."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Host", "").lower() not in allowed_hosts(port()):
            return _refusal(403, "Wrong host", "This dashboard answers only on 127.0.0.1.")
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _refusal(401, "Wrong token", _HOW)
            rest = [(k, v) for k, v in request.query.items() if k != "token"]
            target = request.path + ("?" + urlencode(rest) if rest else "")
            response = web.Response(status=303, headers={"Location": target})
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            return response
        cookie = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), token.encode()):
            return _refusal(401, "Sign-in needed", _HOW)
        return await handler(request)

    return check


_HOW = "Open the dashboard with <code>jobvault dashboard</code>, which adds this install's secret."


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the security headers on every answer, errors included."""
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")

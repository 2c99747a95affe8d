"""Security headers on every answer, and tokens kept out of the access log.

Every answer of the app — JSON, errors (the 500s of Starlette's outermost middleware
included), pages, static files, event streams, the HTML report — carries:

* `Content-Security-Policy`: by default `PAGE_POLICY`. Scripts only from this origin, as files:
  no inline script and no inline event handler runs, so a string that slipped into the markup
  could not run code (nor read the admin token the page keeps). Inline *styles* stay allowed:
  plotly.js sets them on the elements it draws. `frame-ancestors 'none'`: no other site may
  show the pages in a frame (clickjacking). An answer that brings its own policy keeps it: the
  HTML report and the API docs, whose inline scripts are allowed one by one by their SHA-256
  (`html_policy`), so that nothing added to them could run either.
* `X-Content-Type-Options: nosniff`, so a JSON or CSV answer is never run as a script;
  `X-Frame-Options: DENY` for browsers without `frame-ancestors`;
  `Referrer-Policy: no-referrer`, so a page's address is never sent to another site.

The access log: tokens travel in the `Authorization` header, but the start-up URL
(`/?token=`) and old share links (`?share=`) still carry one in the first request of a
browser. `RedactTokens` rewrites such query values before uvicorn's access log formats them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    b"content-security-policy": PAGE_POLICY.encode(),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.I)
_EXTERNAL = re.compile(r"""<(script|link)\b[^>]*?\b(?:src|href)=["'](https://[^/"']+)""", re.I)


def html_policy(html: str) -> str:
    """A CSP for one generated HTML document: its inline scripts, exactly as they are (by
    SHA-256, CSP Level 2), and the https origins its `<script src>` / `<link href>` name.

    Hashing the finished document is safe only if no stored string can end a script early:
    the report's data goes through plotly's JSON encoder, which writes `<` and `/` as `\\u003c`
    and `\\u002f`, and its other text through `html.escape`.
    """
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    ]
    external = _EXTERNAL.findall(html)
    scripts = sorted({origin for tag, origin in external if tag.lower() == "script"})
    links = sorted({origin for tag, origin in external if tag.lower() == "link"})
    directives = [
        ["default-src", "'none'"],
        ["script-src", *scripts, *hashes],
        ["style-src", "'unsafe-inline'", *links],
        ["img-src", "data:", "blob:", *links],
        ["font-src", "data:", "https:"],
        ["connect-src", "'self'"],
        ["worker-src", "blob:"],
        ["base-uri", "'none'"],
        ["form-action", "'none'"],
        ["frame-ancestors", "'none'"],
    ]
    return "; ".join(" ".join(directive) for directive in directives)


class SecurityHeaders:
    """Pure ASGI (no body buffering, so event streams pass as they are written): adds
    `HEADERS` to every response start, keeping a policy the answer set itself."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in HEADERS.items() if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Wrap the whole middleware stack, Starlette's error middleware included, so that the
    500s it answers carry the headers too (`add_middleware` would sit inside it)."""
    build: Callable[[], ASGIApp] = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build())  # type: ignore[method-assign]
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access_log.filters):
        access_log.addFilter(RedactTokens())


# Query parameters whose values are credentials: the start-up token and share tokens.
_SECRET_QUERY = re.compile(r"([?&](?:token|share|access_token)=)[^&#\s\"]*", re.I)


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Rewrites credentials in a log record's message and string arguments (uvicorn passes
    the request line as an argument of the access log's format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True

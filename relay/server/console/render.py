"""Templates and static files of the console, and the headers every console answer carries.

Plain Jinja2 (not aiohttp-jinja2): rendering is one call, and that package would add a setup
step and a dependency for nothing the console needs. Autoescaping is on for every template and
``StrictUndefined`` turns a misspelt variable into an error in tests instead of an empty cell.
Webhook data is only ever printed with ``{{ }}``: it is text, never markup.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from relay.model import iso_utc
from relay.server.console.views import age_text, delivery_problem

# No inline script or style anywhere, no plugins, no framing, forms only to relay itself, and
# nothing loaded from another origin: an <img src=x onerror=...> that slipped through escaping
# still could not run or call out.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Console URLs carry emails in their query strings.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


def secure(response: web.StreamResponse, *, cache: bool = False) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    # Pages hold webhook data (emails, bodies): not for shared caches or the back button's disk.
    response.headers["Cache-Control"] = "public, max-age=3600" if cache else "no-store"
    return response


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str


def load_static() -> dict[str, StaticFile]:
    """Every file under static/, read once: served from memory by name, so no path from a
    request ever reaches the filesystem."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("relay.server.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = StaticFile(entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def asset_version(files: dict[str, StaticFile]) -> str:
    """Changes whenever a static file does, so browsers may cache them and still see updates."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + files[name].body)
    return digest.hexdigest()[:12]


def _age_since(ts: float | None) -> str:
    return age_text(None if ts is None else time.time() - ts)


def _duration_ms(seconds: float | None) -> str:
    return "\N{EN DASH}" if seconds is None else f"{seconds * 1000:.1f} ms"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("relay.server.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        {"iso": iso_utc, "age_since": _age_since, "age": age_text, "ms": _duration_ms,
         "size": _size, "problem": delivery_problem}
    )  # fmt: skip
    return env


def html(
    env: jinja2.Environment, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    body = env.get_template(template).render(context)
    response = web.Response(status=status, text=body, content_type="text/html", charset="utf-8")
    secure(response)
    return response


def redirect(location: str) -> web.Response:
    """303 See Other: after a form's POST the browser GETs the result (reload does not repost)."""
    response = web.Response(status=303, headers={"Location": location})
    secure(response)
    return response

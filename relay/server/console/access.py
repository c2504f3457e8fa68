"""Who may use the console: login and logout, sessions or bearer tokens, CSRF on every POST.

Without the admin token nothing but the login form is shown: every console URL answers it with
401, whatever the path. A state-changing request (any method but GET and HEAD) must carry the
CSRF token of its session in a ``csrf`` form field (or an ``X-CSRF-Token`` header), else 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay.server.admin_json import BadRequestError
from relay.server.auth import admin_auth_problem, admin_token_problem
from relay.server.console import session
from relay.server.console.deps import Auth, ConsoleDeps
from relay.server.console.render import html, redirect, secure
from relay.server.control import (
    ConflictError,
    NoBreakerError,
    NotFoundError,
    UnknownDestinationError,
)
from relay.store import StoreError

log = logging.getLogger("relay.console")

PREFIX = "/console"
LOGIN = PREFIX + "/login"
STATIC = PREFIX + "/static/"
OPERATOR_HEADER = "X-Relay-Operator"
BEARER_OPERATOR = "console"
SAFE_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthedHandler = Callable[[web.Request, Auth], Awaitable[web.StreamResponse]]


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _secure_cookie(request: web.Request) -> bool:
    # Behind a TLS proxy relay sees plain HTTP; the proxy's header only makes the cookie stricter.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


class Access:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        self._key: tuple[str, bytes] | None = None

    def key(self) -> bytes | None:
        """The session signing key, or None while no admin token is configured (console closed)."""
        token = self.deps.settings.admin.token
        if not token:
            return None
        if self._key is None or self._key[0] != token:
            self._key = (token, session.session_key(token))
        return self._key[1]

    def authenticate(self, request: web.Request) -> Auth | None:
        key = self.key()
        if key is None:
            return None
        authorization = request.headers.get("Authorization")
        if authorization:
            if admin_auth_problem(self.deps.settings.admin.token, authorization) is not None:
                return None
            name = request.headers.get(OPERATOR_HEADER, "").strip()[:100] or BEARER_OPERATOR
            sid = session.BEARER_SID
            return Auth(name, name, sid, session.csrf_token(key, sid), "bearer")
        found = session.read(key, request.cookies.get(session.SESSION_COOKIE), time.time())
        if found is None:
            return None
        return Auth(
            f"console:{found.operator}",
            found.operator,
            found.sid,
            session.csrf_token(key, found.sid),
            "session",
        )

    def middleware(self) -> Any:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not is_console(request.path):
                return await handler(request)
            if request.path.startswith(STATIC) or request.path == LOGIN:
                return secure(await handler(request), cache=request.path.startswith(STATIC))
            auth = self.authenticate(request)
            if auth is None:
                return self.login_page(request, status=401, next_path=request.path_qs)
            if request.method not in SAFE_METHODS:
                form = await request.post()
                given = form.get("csrf") or request.headers.get("X-CSRF-Token")
                key = self.key()
                assert key is not None
                if not isinstance(given, str) or not session.csrf_valid(key, auth.sid, given):
                    log.warning(
                        "console: %s %s refused: no valid CSRF token", request.method, request.path
                    )
                    return self.error(request, auth, 403, _CSRF_REFUSED)
            try:
                return await handler(request)
            except BadRequestError as exc:
                return await self.refused(request, auth, 400, str(exc))
            except (UnknownDestinationError, NotFoundError) as exc:
                return await self.refused(request, auth, 404, str(exc))
            except (ConflictError, NoBreakerError) as exc:
                # What Control says cannot be done now, and why, as the admin API's 409 says it.
                return await self.refused(request, auth, 409, str(exc))
            except StoreError as exc:
                return self.error(request, auth, 503, f"Storage is unavailable: {exc}")
            except web.HTTPNotFound:
                return self.error(request, auth, 404, f"Nothing at {request.path}.")
            except web.HTTPMethodNotAllowed:
                return self.error(request, auth, 405, f"{request.method} is not allowed here.")

        return guard

    async def refused(
        self, request: web.Request, auth: Auth, status: int, reason: str
    ) -> web.Response:
        """An action or page that could not be done: its reason as a sentence, and a link back
        to the page its form was on (its ``back`` field), else to the overview."""
        back = None
        if request.method not in SAFE_METHODS:
            back = session.safe_next(str((await request.post()).get("back", "")))
        return self.deps.error(auth, status, sentence(reason), back)

    def authed(self, handler: AuthedHandler) -> Handler:
        """A route handler that gets the request's operator (the guard has let it through)."""

        async def run(request: web.Request) -> web.StreamResponse:
            auth = self.authenticate(request)
            if auth is None:  # the token changed between the guard and here
                return self.login_page(request, status=401, next_path=request.path_qs)
            return await handler(request, auth)

        return run

    def error(
        self, request: web.Request, auth: Auth | None, status: int, message: str
    ) -> web.Response:
        return self.deps.error(auth, status, message)

    # -- login and logout --------------------------------------------------------------------

    def login_page(
        self,
        request: web.Request,
        *,
        status: int = 200,
        next_path: str | None = None,
        problem: str | None = None,
        operator: str = "",
    ) -> web.Response:
        key = self.key()
        nonce = session.new_login_nonce()
        context = self.deps.context(
            None,
            "login",
            closed=key is None,
            problem=problem,
            operator=operator,
            next_path=session.safe_next(next_path),
            login_csrf=session.csrf_token(key, session.login_sid(nonce)) if key else "",
        )
        response = html(self.deps.env, "login.html", context, status)
        if key is not None:
            response.set_cookie(
                session.LOGIN_COOKIE,
                nonce,
                path=PREFIX,
                httponly=True,
                samesite="Strict",
                secure=_secure_cookie(request),
                max_age=3600,
            )
        return response

    async def show_login(self, request: web.Request) -> web.Response:
        if self.authenticate(request) is not None:
            return redirect(session.safe_next(request.query.get("next")))
        return self.login_page(request, next_path=request.query.get("next"))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        operator = str(form.get("operator", "")).strip()
        next_path = str(form.get("next", ""))
        key = self.key()
        if key is None:
            return self.login_page(request, status=401)
        nonce = request.cookies.get(session.LOGIN_COOKIE, "")
        given = form.get("csrf")
        if (
            not nonce
            or not isinstance(given, str)
            or not session.csrf_valid(key, session.login_sid(nonce), given)
        ):
            expired = "The login form expired (or cookies are off). Please try again."
            return self.login_page(
                request, status=403, next_path=next_path, problem=expired, operator=operator
            )
        if (problem := session.operator_problem(operator)) is not None:
            return self.login_page(
                request, status=400, next_path=next_path, problem=problem, operator=operator
            )
        token = str(form.get("token", ""))
        if admin_token_problem(self.deps.settings.admin.token, token) is not None:
            log.warning("console: failed login as %r from %s", operator, request.remote)
            return self.login_page(
                request,
                status=401,
                next_path=next_path,
                problem="That is not the admin token.",
                operator=operator,
            )
        log.info("console: %s logged in from %s", operator, request.remote)
        response = redirect(session.safe_next(next_path))
        response.set_cookie(
            session.SESSION_COOKIE,
            session.issue(key, operator, time.time()),
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=_secure_cookie(request),
            max_age=int(session.SESSION_SECONDS),
        )
        response.del_cookie(session.LOGIN_COOKIE, path=PREFIX)
        return response

    async def logout(self, request: web.Request, auth: Auth) -> web.Response:
        log.info("console: %s logged out", auth.name)
        response = redirect(LOGIN)
        response.del_cookie(session.SESSION_COOKIE, path=PREFIX)
        return response


def sentence(reason: str) -> str:
    """A one-line reason from Control or a parser, as a sentence on a page.

    >>> sentence("delivery 7 is being sent right now")
    'Delivery 7 is being sent right now.'
    """
    text = reason.strip()
    if not text:
        return "That could not be done."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


_CSRF_REFUSED = (
    "This request was refused: it did not carry the console's CSRF token, so it may not have "
    "come from a console page. Go back, reload the page and try again."
)

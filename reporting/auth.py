"""Who is asking, and what they may read: API tokens, their scopes, and the UI's session.

A token is 32 random bytes, shown once by ``run_service.py token create``; settings keep
only its SHA-256 (``[auth.tokens.<name>] hash``). One unsalted SHA-256 is enough here, and
a slow password hash would buy nothing: the token is not a password a person chose, and
256 random bits cannot be guessed from their hash. Presented tokens are compared by hash
with :func:`hmac.compare_digest`, against every configured token without stopping early,
so the time taken says nothing about which token came close.

A request authenticates with ``Authorization: Bearer <token>``, or, for the web UI's pages,
with the signed session cookie that signing in with a token sets (``HttpOnly``,
``SameSite=Strict``). The cookie authenticates ``GET`` and ``HEAD`` only: anything that
changes state takes a bearer token (the admin endpoints) or a CSRF token (signing in and
out), so a page of another site can never act with an operator's session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from flask.wrappers import Request, Response
from itsdangerous import URLSafeTimedSerializer

from reporting.report_error import ReportError
from sediment.core.settings import TOKEN_SCOPES, AuthSettings, TokenSettings

#: Every token starts with this, so a secret scanner (or a person) can tell what it is.
TOKEN_PREFIX = "sediment_"
REALM = "sediment"
_SESSION_TOKEN = "token"
_SESSION_SINCE = "since"
_SESSION_CSRF = "csrf"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_PRINCIPAL = "sediment.principal"


def new_token() -> str:
    """A fresh token: the prefix and 32 random bytes, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """How settings store ``token``: ``sha256:`` and its hex digest."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a configured token (or everyone, with authentication off)."""

    name: str
    scopes: frozenset[str]
    #: The only reports and tables this principal may read; empty: all of them.
    reports: frozenset[str] = frozenset()

    def may_read(self, report_name: str) -> bool:
        return not self.reports or report_name in self.reports


#: Every request with authentication off.
EVERYONE = Principal("anonymous", frozenset(TOKEN_SCOPES))


class Tokens:
    """The configured tokens, found by a presented token or by a session's stored hash."""

    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.enabled
        self.session_lifetime = settings.session_lifetime.total_seconds()
        self._tokens: Sequence[TokenSettings] = settings.tokens

    def find(self, presented: str) -> Principal | None:
        """The principal of a presented token, or None."""
        return self._by_hash(hash_token(presented))

    def _by_hash(self, digest: str) -> Principal | None:
        found = None
        for token in self._tokens:  # all of them, whatever matched: constant time
            if hmac.compare_digest(digest.encode(), token.hash.encode()):
                found = token
        if found is None:
            return None
        return Principal(found.name, frozenset(found.scopes), frozenset(found.reports))

    def from_session(self) -> Principal | None:
        """The principal the UI session signed in as, while the session lasts and its
        token is still configured (removing a token from settings ends its sessions)."""
        digest, since = session.get(_SESSION_TOKEN), session.get(_SESSION_SINCE)
        if not isinstance(digest, str) or not isinstance(since, int | float):
            return None
        if time.time() - since > self.session_lifetime:
            return None
        return self._by_hash(digest)


def tokens() -> Tokens:
    """The tokens of the app serving this request."""
    from reporting.state import current_state  # the state module imports this one's types

    return current_state().tokens


def current_principal() -> Principal | None:
    """Who the current request acts as, or None when it carries no valid credential.

    :raises ReportError: 401 when the ``Authorization`` header is malformed or its token
        unknown (a wrong token is never silently ignored in favour of a cookie).
    """
    # In the request's environ, not ``g``: ``g`` outlives the request when an application
    # context was already pushed (a test, a command), and a principal must never leak.
    if _PRINCIPAL in request.environ:
        principal: Principal | None = request.environ[_PRINCIPAL]
        return principal
    found = _authenticate()
    request.environ[_PRINCIPAL] = found
    return found


def known_principal() -> Principal | None:
    """The principal this request was found to act as, if it has been asked yet."""
    return principal_in(request.environ)


def principal_in(environ: Mapping[str, Any]) -> Principal | None:
    """:func:`known_principal` of the request whose WSGI environ is ``environ``."""
    found: Principal | None = environ.get(_PRINCIPAL)
    return found


def current_principal_or_none() -> Principal | None:
    """Like :func:`current_principal`, but None for a bad ``Authorization`` header too (for
    pages that only show who is signed in, such as an error page)."""
    try:
        return current_principal()
    except ReportError:
        return None


def _authenticate() -> Principal | None:
    configured = tokens()
    if not configured.enabled:
        return EVERYONE
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'",
                               error="invalid_request")
        principal = configured.find(presented.strip())
        if principal is None:
            raise unauthorized("the token is not valid: it is unknown or was revoked",
                               error="invalid_token")
        return principal
    if request.method in _SAFE_METHODS:
        return configured.from_session()
    return None


def require(scope: str, report_name: str | None = None) -> Principal:
    """The current principal, if it holds ``scope`` (and may read ``report_name``).

    :raises ReportError: 401 without a valid credential, 403 without the scope or the
        report in the token's allow-list.
    """
    principal = current_principal()
    if principal is None:
        raise unauthorized("this needs an API token: send 'Authorization: Bearer <token>' "
                           "(`run_service.py token create` makes one)")
    if scope not in principal.scopes:
        raise ReportError(403, "insufficient_scope",
                          f"the token {principal.name!r} lacks the {scope!r} scope",
                          headers={"WWW-Authenticate": _challenge(
                              error="insufficient_scope", scope=scope)})
    if report_name is not None and not principal.may_read(report_name):
        raise ReportError(403, "report_not_allowed",
                          f"the token {principal.name!r} may not read {report_name!r}",
                          headers={"WWW-Authenticate": _challenge(
                              error="insufficient_scope", scope=scope)})
    return principal


def require_signed_in() -> Principal:
    """The current principal, whatever its scopes (the catalog lists what it may read)."""
    principal = current_principal()
    if principal is None:
        raise unauthorized("this needs an API token: send 'Authorization: Bearer <token>'")
    return principal


def unauthorized(detail: str, *, error: str | None = None) -> ReportError:
    """A 401 with the ``WWW-Authenticate`` challenge RFC 6750 asks for."""
    return ReportError(401, "unauthorized", detail,
                       headers={"WWW-Authenticate": _challenge(error=error)})


def _challenge(**params: str | None) -> str:
    parts = [f'realm="{REALM}"', *(f'{k}="{v}"' for k, v in params.items() if v)]
    return "Bearer " + ", ".join(parts)


# The UI's session: signed in with a token, out with a CSRF-checked POST.

def sign_in(presented: str) -> Principal | None:
    """Start a UI session for a presented token; None (and no session) if it is unknown."""
    principal = tokens().find(presented.strip())
    if principal is None:
        return None
    session.clear()
    session.permanent = True
    session[_SESSION_TOKEN] = hash_token(presented.strip())
    session[_SESSION_SINCE] = int(time.time())
    session[_SESSION_CSRF] = secrets.token_urlsafe(24)
    request.environ[_PRINCIPAL] = principal
    return principal


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token, created on first use (the sign-in form needs one before
    anyone has signed in)."""
    token = session.get(_SESSION_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session[_SESSION_CSRF] = token
    return token


def check_csrf(submitted: str | None) -> None:
    """:raises ReportError: 403 unless ``submitted`` is the session's CSRF token."""
    expected = session.get(_SESSION_CSRF)
    if not isinstance(expected, str) or not submitted \
            or not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise ReportError(403, "csrf_failed", "the form has expired or did not come from this "
                          "site; reload the page and try again")


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, with the signing serializer built once per key.

    Flask opens the session of every request, API calls included, and builds a new
    serializer each time to do it: a measurable share of a report page's time for a
    session that API calls never use.
    """

    def __init__(self) -> None:
        self._serializers: dict[object, URLSafeTimedSerializer] = {}

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        key = app.secret_key
        if not key:
            return None
        if key not in self._serializers:
            self._serializers[key] = super().get_signing_serializer(app)  # type: ignore[assignment]
        return self._serializers[key]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if "HTTP_COOKIE" not in request.environ and app.secret_key:
            return self.session_class()  # no cookie to read (an API call): an empty session
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not session and not session.modified:
            # Nothing to write or delete (every API call). Flask's own method gets here
            # too, after reading seven cookie settings.
            if session.accessed:
                response.vary.add("Cookie")
            return
        super().save_session(app, session, response)

"""Security headers on every response, API and UI alike.

The UI runs no inline script and loads nothing from another origin, so the policy can be
strict: scripts, styles and images from this origin only, no frames of it anywhere, forms
posting back here only. Responses that needed a credential are not cached by anyone.

The headers are added as the response starts (:mod:`reporting.response_start`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from reporting.auth import principal_in
from reporting.response_start import on_response_start

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

#: Content Security Policy: no ``unsafe-inline`` anywhere, no third-party origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_PAIRS = list(SECURITY_HEADERS.items())
#: For data read with a token: no shared cache may keep it for the next client.
_PRIVATE = ("Cache-Control", "private, no-store")


def install_security_headers(app: Flask) -> None:
    """Add :data:`SECURITY_HEADERS` to every response of ``app`` (errors included)."""
    on_response_start(app, _secure)


def _secure(environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]) -> None:
    """:data:`SECURITY_HEADERS` on a response that has none of them (all or none: no view
    sets any), and ``Cache-Control: private, no-store`` on one that needed a credential
    and sets no ``Cache-Control`` of its own."""
    names = {name.lower() for name, _ in headers}
    if "content-security-policy" not in names:
        headers.extend(_PAIRS)
    principal = principal_in(environ)
    if principal is not None and principal.name != "anonymous" and "cache-control" not in names:
        headers.append(_PRIVATE)

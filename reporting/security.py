"""Security headers on every response, API and UI alike.

The UI runs no inline script and loads nothing from another origin, so the policy can be
strict: scripts, styles and images from this origin only, no frames of it anywhere, forms
posting back here only. Responses that needed a credential are not cached by anyone.
"""

from __future__ import annotations

from flask import Flask, Response

from reporting.auth import known_principal

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


def install_security_headers(app: Flask) -> None:
    """Add :data:`SECURITY_HEADERS` to every response of ``app`` (errors included)."""

    pairs = list(SECURITY_HEADERS.items())

    @app.after_request
    def _secure(response: Response) -> Response:
        # All or none: no view sets any of them (one look-up instead of five).
        if "Content-Security-Policy" not in response.headers:
            response.headers.extend(pairs)
        principal = known_principal()
        if principal is not None and principal.name != "anonymous":
            # Data read with a token: no shared cache may keep it for the next client.
            response.headers.setdefault("Cache-Control", "private, no-store")
        return response

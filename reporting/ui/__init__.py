"""The web UI: server-rendered pages over the same reports, ledger and probes as the API.

Every page works without JavaScript, and none is loaded: links and forms with GET carry the
API's own query string (see :mod:`reporting.ui.query`), so a page is bookmarkable and its
CSV button downloads exactly what it shows. The stylesheet is the package's own file; the
Content Security Policy (:mod:`reporting.security`) allows nothing else.

With authentication on, a page without a session sends the browser to ``/sign-in``; a page
the token's scopes do not cover is a 403 page. Errors a browser meets on these pages are
rendered as HTML by :func:`install_problem_pages`; the JSON API keeps its problem documents.
"""

from reporting.ui.pages import blueprint
from reporting.ui.problems import install_problem_pages

__all__ = ["blueprint", "install_problem_pages"]

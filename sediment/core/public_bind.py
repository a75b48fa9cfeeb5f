"""Whether settings are safe to serve on an address other machines can reach.

The shipped settings are for a local demo: no authentication, a development secret key,
demo data seeded into empty databases. All three are fine on loopback and dangerous
anywhere else, so ``serve`` on any other address refuses to start while one holds, naming
the setting to change, unless ``service.allow_insecure`` says the operator knows.
"""

from __future__ import annotations

import ipaddress

from sediment.core.settings import ServiceSettings, Settings

DEVELOPMENT_SECRET_KEY = ServiceSettings().secret_key


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127/8, ``::1``).

    Any other name counts as public: what it resolves to can change.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def public_bind_problems(settings: Settings, host: str) -> list[str]:
    """What makes ``settings`` unsafe to serve on ``host``, one line each (empty: safe)."""
    if is_loopback(host):
        return []
    problems = []
    if not settings.auth.enabled:
        problems.append(f"auth.enabled is false: anyone reaching {host} could read every "
                        "report; set auth.enabled = true and create a token with "
                        "`run_service.py token create`")
    if settings.service.secret_key == DEVELOPMENT_SECRET_KEY:
        problems.append("service.secret_key is the development value, which signs cursors "
                        "and sessions anyone can forge; set SEDIMENT_SERVICE__SECRET_KEY to a "
                        "long random value")
    if settings.service.seed_when_empty:
        problems.append("service.seed_when_empty is true: demo data would be written into "
                        "empty production databases; set service.seed_when_empty = false")
    return problems

"""The service's listening address, checked before startup does any work.

``serve`` migrates, seeds and starts the scheduler before the server binds its socket. An
address already in use (another Sediment still running, most often) or a host that does not
resolve used to stop it only then, with waitress's traceback ("OSError: [Errno 98] Address
already in use", "ValueError: Invalid host/port specified"), and with gunicorn workers the
parent said nothing at all. The address is now bound once and released first, and any
failure to listen is one line naming the settings to change.
"""

from __future__ import annotations

import errno
import socket

#: What each setting is called, in the settings file and on the command line.
_SETTINGS = "service.host, service.port; serve --host, --port"

_HINTS = {
    errno.EADDRINUSE: "another process is listening there (another Sediment still running?): "
                      "stop it, or choose another port",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's: use one of its addresses, "
                         "127.0.0.1, or 0.0.0.0 for every interface",
    errno.EACCES: "ports below 1024 need privileges: choose a port from 1024 up, and put a "
                  "proxy in front for port 80 or 443",
}


class CannotListen(Exception):
    """The service cannot listen on its address; the message says which settings to change."""


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` as the server will (``SO_REUSEADDR``, as waitress and gunicorn
    set it), then release it.

    :raises CannotListen: the host does not resolve, or the address cannot be bound.
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise cannot_listen(host, port, exc) from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise cannot_listen(host, port, exc) from None


def cannot_listen(host: str, port: int, error: Exception) -> CannotListen:
    """The one-line error for a failure to listen on ``host:port``: the system's reason, and
    what to do about it."""
    if isinstance(error, (socket.gaierror, UnicodeError)):
        reason = f"the host {host!r} does not resolve"
        hint = "use one of this machine's addresses, 127.0.0.1, or 0.0.0.0"
    elif isinstance(error, OSError):
        reason = (error.strerror or str(error)).lower()
        hint = _HINTS.get(error.errno or 0, "check the address")
    else:  # waitress's ValueError for an address it could not resolve
        reason, hint = str(error).rstrip("."), "check the address"
    return CannotListen(f"cannot listen on {host}:{port} ({_SETTINGS}): {reason}; {hint}")

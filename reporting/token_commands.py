"""``token create|list``: API tokens for ``[auth.tokens.<name>]``.

``create`` prints a new token once, with the settings table that admits it; Sediment keeps
no copy, so a lost token is replaced, never recovered. ``list`` shows what settings admit
(names, scopes, allow-lists), never a secret.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
from typing import Any

from reporting.auth import hash_token, new_token
from sediment.core.commandline import EXIT_OK
from sediment.core.settings import TOKEN_SCOPES

#: Lower case, so that ``SEDIMENT_AUTH__TOKENS__<NAME>__HASH`` reaches it too.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def add_commands(commands: Any) -> None:
    """Add ``token`` to the top-level subparsers."""
    token = commands.add_parser(
        "token", help="create API tokens; list the configured ones",
        description="API tokens for [auth]. See each action's --help.")
    sub = token.add_subparsers(title="token actions", metavar="ACTION", required=True)
    create = sub.add_parser(
        "create", help="make a token and print it once, with its settings table",
        description="Print a new random token (shown once: Sediment keeps only its hash) "
        "and the [auth.tokens.NAME] table, or environment variables, that admit it.")
    create.add_argument("--scopes", required=True, type=_scopes, nargs="+",
                        metavar="SCOPE", help=f"what it may do, comma- or space-separated, "
                        f"from: {', '.join(TOKEN_SCOPES)}")
    create.add_argument("--name", type=_token_name, default=None,
                        help="what the token is for, e.g. dashboards (lower case, digits, _; "
                        "default: token_ and 6 random hex digits)")
    create.add_argument("--reports", type=_names, nargs="+", default=[], metavar="REPORT",
                        help="reports and tables the token may read, comma- or "
                        "space-separated (default: all)")
    create.set_defaults(handler=cmd_token_create)
    listing = sub.add_parser("list", help="show the configured tokens (never a secret)",
                             description="Show each configured token's name, scopes and "
                             "allow-list, and whether authentication is on.")
    listing.set_defaults(handler=cmd_token_list)


def _token_name(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a token name: lower-case letters, digits and _, starting "
            "with a letter")
    return text


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return names


def _scopes(text: str) -> tuple[str, ...]:
    scopes = _names(text)
    for scope in scopes:
        if scope not in TOKEN_SCOPES:
            raise argparse.ArgumentTypeError(
                f"{scope!r} is not a scope: use {', '.join(TOKEN_SCOPES)}")
    return scopes


def cmd_token_create(args: argparse.Namespace) -> int:
    token = new_token()
    digest = hash_token(token)
    name = args.name or f"token_{secrets.token_hex(3)}"
    scopes = list(dict.fromkeys(scope for group in args.scopes for scope in group))
    reports = list(dict.fromkeys(report for group in args.reports for report in group))
    table = {"hash": digest, "scopes": scopes, **({"reports": reports} if reports else {})}
    print(f"New token {name!r} (shown once; store it in a secret manager):\n\n"
          f"    {token}\n")
    print("Admit it with this table in settings.toml (and auth.enabled = true):\n")
    print(f"[auth.tokens.{name}]")
    for key, value in table.items():
        print(f"{key} = {json.dumps(value)}")
    print("\nor with these environment variables:\n")
    for key, value in table.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"SEDIMENT_AUTH__TOKENS__{name.upper()}__{key.upper()}='{shown}'")
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    auth = args.settings_obj.auth
    print(f"authentication is {'on' if auth.enabled else 'off'} (auth.enabled)")
    if not auth.tokens:
        print("no tokens configured; `token create` makes one")
    for configured in auth.tokens:
        reports = ", ".join(configured.reports) or "every report and table"
        print(f"{configured.name}: scopes {', '.join(configured.scopes)}; reads {reports}")
    return EXIT_OK

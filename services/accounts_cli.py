"""``rtswitch accounts``: accounts kept in Redis (``REDIS_URL``), read by edges that run with ``ENABLE_DB=true``.

A secret is printed once, by ``add`` and ``rotate``, and never logged; ``list`` shows no secrets. Accounts
from ``ACCOUNTS`` (environment or ``.env``) are listed too but are changed where they are defined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from shared.accounts import Account, AccountBook, AccountError, AccountStore
from shared.config import Config, ConfigError, load_config
from shared.providers import installed_providers

__all__ = ["main"]

DESCRIPTION = "Accounts kept in Redis (REDIS_URL), read by edges that run with ENABLE_DB=true."
EPILOG = """\
Edges read these accounts when ENABLE_DB=true; a change reaches every edge within RS_ACCOUNTS_REFRESH_S
(default 1 s). Rotating a secret also revokes every client token minted with the old one.
"""


def _providers(raw: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in raw.split(",") if p.strip())
    unknown = [p for p in names if p not in installed_providers()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown provider(s): {', '.join(unknown)}")
    return names


def _provider(raw: str) -> str:
    if not raw:
        return ""
    (name,) = _providers(raw) or ("",)
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtswitch accounts", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="a new account; prints its secret once")
    add.add_argument("account")
    add.add_argument("--secret", help="use this secret instead of a generated one")
    add.add_argument("--provider", type=_provider, help="the account's default provider")
    add.add_argument("--fallback", type=_providers, default=(), help="fallback order, e.g. gemini,openai")
    sub.add_parser("list", help="every account (no secrets)").add_argument("--json", action="store_true")
    sub.add_parser("rotate", help="a new secret, printed once; the old one stops working").add_argument("account")
    disable = sub.add_parser("disable", help="refuse the account's new connections and tokens")
    disable.add_argument("account")
    disable.add_argument("--enable", action="store_true", help="enable it again")
    limits = sub.add_parser("limits", help="set or show the account's limits")
    limits.add_argument("account")
    limits.add_argument("--max-sessions", type=int, help="concurrent sessions of the account")
    limits.add_argument("--fps", type=float, help="client frames per second per session")
    limits.add_argument("--clear", action="store_true", help="remove the limits (before applying the others)")
    defaults = sub.add_parser("defaults", help="set the account's default provider and fallback order")
    defaults.add_argument("account")
    defaults.add_argument("--provider", type=_provider, help="default provider ('' clears it)")
    defaults.add_argument("--fallback", type=lambda raw: _providers(raw) if raw else (),
                          help="fallback order ('' clears it)")
    return parser


def _stamp(unix: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix)) if unix else None


def _row(account: Account) -> dict[str, object]:
    return {
        "id": account.id, "source": account.source, "disabled": account.disabled, "provider": account.provider,
        "fallback": list(account.fallback), "max_sessions": account.limits.max_sessions,
        "fps": account.limits.frames_per_s,
        "rotated_at": _stamp(account.rotated_at),
    }


def _print_table(rows: list[dict[str, object]]) -> None:
    cols = ["id", "source", "disabled", "provider", "fallback", "max_sessions", "fps", "rotated_at"]
    cells = [[("-" if r[c] in (None, []) else ",".join(r[c]) if isinstance(r[c], list) else str(r[c])) for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    for row in [cols, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


async def _run(args: argparse.Namespace, config: Config) -> None:
    client = aioredis.from_url(config.redis_url, socket_connect_timeout=3)
    store = AccountStore(client)
    try:
        action: Callable[[], Awaitable[None]] = {
            "add": lambda: _add(store, config, args),
            "list": lambda: _list(store, config, args),
            "rotate": lambda: _rotate(store, config, args),
            "disable": lambda: store.set_disabled(args.account, not args.enable),
            "limits": lambda: _limits(store, args),
            "defaults": lambda: store.set_defaults(args.account, provider=args.provider, fallback=args.fallback),
        }[args.action]
        await action()
    finally:
        await client.aclose()


def _env_owned(config: Config, account: str) -> None:
    if account in config.accounts:
        raise AccountError(f"account {account} is defined in ACCOUNTS (environment or .env): change it there")


async def _add(store: AccountStore, config: Config, args: argparse.Namespace) -> None:
    _env_owned(config, args.account)
    secret = await store.add(args.account, secret=args.secret, provider=args.provider, fallback=args.fallback)
    _show_secret(args.account, secret)


async def _rotate(store: AccountStore, config: Config, args: argparse.Namespace) -> None:
    _env_owned(config, args.account)
    _show_secret(args.account, await store.rotate(args.account))


def _show_secret(account: str, secret: str) -> None:
    print(f"{account}:{secret}")
    print("this secret is shown once; clients use it as <account>:<secret> (Bearer / API key)", file=sys.stderr)


async def _list(store: AccountStore, config: Config, args: argparse.Namespace) -> None:
    book = AccountBook(config.accounts)
    found, version = await store.load()
    book.load(found, version)
    rows = [_row(a) for a in (book.get(i) for i in sorted({*config.accounts, *found})) if a is not None]
    if args.json:
        print(json.dumps(rows))
    else:
        _print_table(rows)


async def _limits(store: AccountStore, args: argparse.Namespace) -> None:
    limits = await store.set_limits(args.account, max_sessions=args.max_sessions, frames_per_s=args.fps,
                                    clear=args.clear)
    print(json.dumps({"account": args.account, "max_sessions": limits.max_sessions, "fps": limits.frames_per_s}))


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "max_sessions", None) is not None and args.max_sessions < 1:
        parser.error("--max-sessions must be at least 1")
    if getattr(args, "fps", None) is not None and args.fps <= 0:
        parser.error("--fps must be positive")
    try:
        config = load_config()
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    if not config.enable_db:
        print("note: ENABLE_DB is not true here; edges read these accounts only with ENABLE_DB=true",
              file=sys.stderr)
    try:
        asyncio.run(_run(args, config))
    except AccountError as exc:
        parser.exit(1, f"rtswitch accounts: {exc}\n")
    except (OSError, aioredis.ConnectionError) as exc:
        parser.exit(1, f"rtswitch accounts: cannot reach Redis (REDIS_URL): {exc}\n")


if __name__ == "__main__":
    main()

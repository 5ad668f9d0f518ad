"""The operator's command line: accounts, keys, wallet, usage and holds, each with --json.
It opens the same database as the running gateway and calls the same operations as the admin API."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

from billing.ledger import Ledger
from billing.store import Store
from core.config import Settings
from core.operations import OperationError, Operations

COMMANDS = ("accounts", "keys", "wallet", "usage", "holds", "recharge", "users")
PASSWORD_ENV = "TOKENTOLL_PASSWORD"


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    accounts = sub.add_parser("accounts", help="create or list accounts").add_subparsers(dest="action", required=True)
    p = accounts.add_parser("create", help="create an account")
    p.add_argument("name")
    p.add_argument("--credit", help="an initial credit in USD")
    accounts.add_parser("list", help="list accounts with their wallets")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create a key; its plaintext is shown once")
    p.add_argument("--account", required=True, help="account name or id")
    p.add_argument("--name", default="default")
    _key_limits(p)
    p = keys.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--account")
    for action, text in (("rotate", "replace the secret; the old one stops working at once"),
                         ("disable", "refuse the key until it is enabled"), ("enable", "accept the key again")):
        keys.add_parser(action, help=text).add_argument("key_id", type=int)
    p = keys.add_parser("set-limit", help="change a key's limits ('none' clears one)")
    p.add_argument("key_id", type=int)
    _key_limits(p)

    wallet = sub.add_parser("wallet", help="credit, adjust or inspect a wallet").add_subparsers(dest="action",
                                                                                                required=True)
    p = wallet.add_parser("credit", help="add money (USD)")
    p.add_argument("account")
    p.add_argument("usd")
    p.add_argument("--note", default="operator credit")
    p = wallet.add_parser("adjust", help="correct a balance up or down (USD, may be negative) with a reason")
    p.add_argument("account")
    p.add_argument("usd")
    p.add_argument("--note", required=True)
    wallet.add_parser("show", help="balance, held and available").add_argument("account")
    p = wallet.add_parser("history", help="the account's ledger entries, newest first")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("usage", help="usage and cost by account, key and model for a month")
    p.add_argument("--account")
    p.add_argument("--key", type=int, dest="key_id")
    p.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    p.add_argument("--request", help="one request's row, by its X-TT-Request-ID")
    sub.add_parser("holds", help="open holds")
    recharge = sub.add_parser("recharge", help="USDT deposits: addresses, records, manual credit, rescan"
                              ).add_subparsers(dest="action", required=True)
    p = recharge.add_parser("address", help="an account's deposit address on a chain")
    p.add_argument("account")
    p.add_argument("chain")
    p = recharge.add_parser("deposits", help="recharge records, newest first")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=100)
    p = recharge.add_parser("orders", help="recharge orders, newest first")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=100)
    p = recharge.add_parser("credit", help="credit a deposit the watcher holds (below the minimum), with a reason")
    p.add_argument("deposit_id", type=int)
    p.add_argument("--note", required=True)
    p = recharge.add_parser("rescan", help="scan a chain again from a block")
    p.add_argument("chain")
    p.add_argument("from_block", type=int)
    users = sub.add_parser("users", help="console log-ins (the password is read from $TOKENTOLL_PASSWORD, else "
                           "asked for, else one line of standard input)").add_subparsers(dest="action", required=True)
    p = users.add_parser("create", help="a log-in for an account (or for a new account named after the address)")
    p.add_argument("email")
    p.add_argument("--account", help="account name or id (default: a new account)")
    p.add_argument("--operator", action="store_true", help="may use the console's Admin pages")
    users.add_parser("list", help="console log-ins").add_argument("--account")
    users.add_parser("set-password", help="a new password; the user's sessions end").add_argument("user")
    p = users.add_parser("set-role", help="user or operator")
    p.add_argument("user")
    p.add_argument("role", choices=("user", "operator"))
    for name, subparser in sub.choices.items():
        for action in getattr(subparser, "_subparsers", None) and subparser._subparsers._group_actions or ():
            for child in action.choices.values():
                child.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("usage", "holds"):
            subparser.add_argument("--json", action="store_true", help="machine-readable output")


def _key_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--monthly-limit", dest="monthly_limit", help="USD per calendar month (UTC)")
    p.add_argument("--models", help="comma-separated allow-list of model names")
    p.add_argument("--rpm", help="requests per minute")
    p.add_argument("--tpm", help="tokens per minute")
    p.add_argument("--expires", dest="expires_at", help="ISO date-time, UTC unless given")


async def _dispatch(ops: Operations, a: argparse.Namespace) -> Any:
    limits = {k: getattr(a, k, None) for k in ("monthly_limit", "models", "rpm", "tpm", "expires_at")}
    match a.command, getattr(a, "action", None):
        case "accounts", "create":
            return await ops.create_account(a.name, a.credit)
        case "accounts", "list":
            return await ops.list_accounts()
        case "keys", "create":
            return await ops.create_key(a.account, a.name, **limits)
        case "keys", "list":
            return await ops.list_keys(a.account)
        case "keys", "rotate":
            return await ops.rotate_key(a.key_id)
        case "keys", "disable":
            return await ops.set_key(a.key_id, status="disabled")
        case "keys", "enable":
            return await ops.set_key(a.key_id, status="active")
        case "keys", "set-limit":
            return await ops.set_key(a.key_id, **limits)
        case "wallet", "credit":
            return await ops.credit(a.account, a.usd, a.note)
        case "wallet", "adjust":
            return await ops.adjust(a.account, a.usd, a.note)
        case "wallet", "show":
            return await ops.wallet(a.account)
        case "wallet", "history":
            return await ops.history(a.account, a.limit)
        case "usage", _ if a.request:
            return await ops.request_usage(a.request)
        case "usage", _:
            return await ops.usage(a.account, a.key_id, a.month)
        case "holds", _:
            return await ops.holds()
        case "recharge", "address":
            return await ops.recharge_address(a.account, a.chain)
        case "recharge", "deposits":
            return await ops.deposits(a.account, a.limit)
        case "recharge", "orders":
            return await ops.orders(a.account, a.limit)
        case "recharge", "credit":
            return await ops.credit_deposit(a.deposit_id, a.note)
        case "recharge", "rescan":
            return await ops.rescan(a.chain, a.from_block)
        case "users", "create":
            return await ops.create_user(a.email, _password(), a.account, "operator" if a.operator else "user")
        case "users", "list":
            return await ops.list_users(a.account)
        case "users", "set-password":
            return await ops.set_password(a.user, _password())
        case "users", "set-role":
            return await ops.set_role(a.user, a.role)
    raise OperationError(f"unknown command {a.command}")


def _password() -> str:
    """A password never comes on the command line (ps and shell history would keep it)."""
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\n")


def run(settings: Settings, args: argparse.Namespace) -> int:
    async def go() -> Any:
        db = Store(settings.billing.database, settings.billing.synchronous)
        await db.start()
        try:
            return await _dispatch(Operations(db, Ledger(db, 0, 0), settings.chains, frozenset(settings.models)), args)
        finally:
            await db.close()

    try:
        result = asyncio.run(go())
    except (OperationError, ValueError) as exc:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps({"error": str(exc)}) + b"\n")
        print(f"tokentoll: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(human(result))
    if isinstance(result, dict) and "key" in result:
        print("tokentoll: this key is shown once and cannot be shown again; store it now", file=sys.stderr)
    return 0


def human(result: Any) -> str:
    rows = result if isinstance(result, list) else [result]
    if not rows:
        return "(none)"
    hidden = {"hash"}
    cols = [c for c in rows[0] if c not in hidden and not (c + "_usd" in rows[0])]
    widths = {c: max(len(c), *(len(_cell(r.get(c), c)) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(_cell(r.get(c), c).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _cell(value: Any, column: str = "") -> str:
    """A value for a person: times (the *_at columns, unix seconds in the JSON) in UTC."""
    if value is None:
        return "-"
    if column.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)

"""Operator operations on accounts, keys, wallets and usage: one implementation each, called by the
CLI (and the admin API). Amounts in and out are USD strings; inside, integer nano-dollars."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from billing import store
from billing.keys import new_key
from billing.ledger import Ledger
from billing.pricing import PriceError, units_to_usd, usd_to_units


class OperationError(Exception):
    """A refused operation, with a message for the operator."""


class NotFoundError(OperationError):
    """The record does not exist (or, for an account holder, is not theirs)."""


class BusyError(OperationError):
    """Too many password hashes are waiting: try again in a few seconds."""


HASH_SLOTS = 2  # scrypt runs (128 MiB each) at once in this process...
HASH_QUEUE = 16  # ...and how many more may wait for a slot before the rest are turned away


MAX_USD = Decimal(10**9)  # no single amount may pass one billion USD
MAX_RATE = 10**12  # the largest RPM or TPM a key may be given
MAX_ID = 2**63 - 1  # SQLite's largest integer: no id or block number is larger (a larger one would overflow)
MAX_ROWS = 1000  # the most rows one listing returns
# the dates an operator may give (key expiries, usage months): far enough, and every later read of them works
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(3000, 1, 1, tzinfo=timezone.utc)
_USD_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_MONTH_TEXT = re.compile(r"([0-9]{4})-([0-9]{2})")


def whole_number(value: Any, low: int, high: int) -> int | None:
    """An int (never a bool or float) or a string of ASCII digits, from `low` to `high`; None for anything else
    (Python's int() also takes other scripts' digits, underscores and thousands of digits)."""
    if isinstance(value, str):
        text = value.strip()
        if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()):
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def parse_usd(text: str, what: str) -> int:
    try:
        if not isinstance(text, str) or not _USD_TEXT.fullmatch(text.strip()):
            raise InvalidOperation
        usd = Decimal(text.strip())
        if not usd.is_finite() or abs(usd) > MAX_USD:
            raise InvalidOperation
        return usd_to_units(usd)
    except (InvalidOperation, PriceError, ValueError):
        raise OperationError(f"{what}: {_shown(text)} is not a USD amount with at most 9 decimals "
                             f"(and at most {MAX_USD} in size)") from None


def _money(row: dict[str, Any], *fields: str) -> dict[str, Any]:
    """Adds a USD string beside each nano-dollar field."""
    out = dict(row)
    for f in fields:
        if out.get(f) is not None:
            out[f + "_usd"] = units_to_usd(out[f])
    return out


def public_key(row: dict[str, Any]) -> dict[str, Any]:
    out = _money(row, "monthly_limit", "held")
    if isinstance(out.get("models"), str):
        out["models"] = json.loads(out["models"])
    return out


def public_account(row: dict[str, Any]) -> dict[str, Any]:
    out = _money(row, "balance", "held")
    out["available"] = row["balance"] - row["held"]
    out["available_usd"] = units_to_usd(out["available"])
    return out


class Operations:
    def __init__(self, db: store.Store, ledger: Ledger, chains: dict[str, Any] | None = None,
                 models: frozenset[str] | None = None) -> None:
        self.db = db
        self.ledger = ledger
        self.chains = chains or {}  # name -> core.config.Chain (USDT recharge)
        self.models = models  # the configured public model names (None: not checked)
        self._hashing = asyncio.Semaphore(HASH_SLOTS)
        self._hash_waiting = 0

    async def _scrypt(self, fn: Any, *args: Any) -> Any:
        """A password hash or check, off the event loop, a few at a time; a long queue is refused at once."""
        if self._hash_waiting >= HASH_SLOTS + HASH_QUEUE:
            raise BusyError("the server is busy checking passwords: try again in a few seconds")
        self._hash_waiting += 1
        try:
            async with self._hashing:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._hash_waiting -= 1

    async def check_password(self, password: str, stored: str) -> bool:
        from core.console import security

        return bool(await self._scrypt(security.check_password, password, stored))

    async def _account(self, ref: str) -> dict[str, Any]:
        if ref.isdigit() and whole_number(ref, 1, MAX_ID) is None:  # "²", or past any id: no account has it
            raise NotFoundError(f"no account {_shown(ref)}")
        try:
            return await self.db.run(store.tx_find_account, ref)
        except LookupError as exc:
            raise NotFoundError(str(exc)) from None

    async def create_account(self, name: str, credit_usd: str | None = None) -> dict[str, Any]:
        if not name or name != name.strip() or name.isdigit() or len(name) > 200:
            raise OperationError("an account name must be 1 to 200 characters, not all digits (those are ids), "
                                 "without surrounding spaces")
        credit = parse_usd(credit_usd, "credit") if credit_usd is not None else 0
        if credit < 0:
            raise OperationError("credit: an initial credit cannot be negative")
        try:
            account = await self.ledger.open_account(name, credit)
        except sqlite3.IntegrityError:
            raise OperationError(f"an account named {name!r} exists already") from None
        return public_account(account)

    async def list_accounts(self) -> list[dict[str, Any]]:
        return [public_account(a) for a in await self.db.run(store.tx_list_accounts)]

    async def create_key(self, account: str, name: str = "default", **limits: Any) -> dict[str, Any]:
        acct = await self._account(account)
        key = new_key()
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise OperationError("a key name must be 1 to 200 characters")
        row = await self.db.run(store.tx_create_key, acct["id"], name, key.display, key.hash,
                                time.time(), self._limits(limits))
        return {**public_key(row), "key": key.plaintext}

    async def list_keys(self, account: str | None = None) -> list[dict[str, Any]]:
        account_id = (await self._account(account))["id"] if account else None
        return [public_key(k) for k in await self.db.run(store.tx_list_keys, account_id)]

    async def rotate_key(self, key_id: int, owner: int | None = None) -> dict[str, Any]:
        """A new secret; the old one fails on the next request. With `owner`, only a key of that account."""
        _key_id(key_id)
        key = new_key()
        try:
            row = await self.db.run(store.tx_rotate_key, key_id, key.display, key.hash, time.time(), owner)
        except LookupError as exc:
            raise NotFoundError(str(exc)) from None
        return {**public_key(row), "key": key.plaintext}

    async def set_key(self, key_id: int, owner: int | None = None, **limits: Any) -> dict[str, Any]:
        """Change a key's status or limits. With `owner`, only a key of that account."""
        _key_id(key_id)
        try:
            return public_key(await self.db.run(store.tx_set_key, key_id, self._limits(limits), owner))
        except LookupError as exc:
            raise NotFoundError(str(exc)) from None

    def _limits(self, limits: dict[str, Any]) -> dict[str, Any]:
        """Operator input (USD strings, model lists, ISO dates, counts) into key columns, each checked;
        None leaves a setting alone and the word "none" clears it."""
        out: dict[str, Any] = {}
        for name, value in limits.items():
            if value is None:
                continue
            if isinstance(value, str) and value.lower() == "none" and name in ("monthly_limit", "models", "rpm",
                                                                              "tpm", "expires_at"):
                out[name] = None
            elif name == "monthly_limit":
                if not isinstance(value, str):
                    raise OperationError("monthly limit: give USD as a string such as \"25.00\"")
                out[name] = parse_usd(value, "monthly limit")
                if out[name] < 0:
                    raise OperationError("monthly limit: cannot be negative")
            elif name == "models":
                names = value.split(",") if isinstance(value, str) else value
                if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
                    raise OperationError("models: a list of model names, or one comma-separated string")
                wanted = [m.strip() for m in names if m.strip()]
                unknown = [m for m in wanted if self.models is not None and m not in self.models]
                if unknown:
                    raise OperationError(f"models: no model is called {', '.join(unknown)} (the configured ones: "
                                         f"{', '.join(sorted(self.models or ()))})")
                out[name] = json.dumps(wanted)
            elif name in ("rpm", "tpm"):
                what = "requests per minute (rpm)" if name == "rpm" else "tokens per minute (tpm)"
                count = whole_number(value, 0, MAX_RATE)
                if count is None:
                    raise OperationError(f"{what}: a whole number from 0 to {MAX_RATE:,} (0 = no limit)")
                out[name] = count
            elif name == "expires_at":
                if not isinstance(value, str):
                    raise OperationError("expiry: give a date (YYYY-MM-DD) or an ISO date-time as a string")
                out[name] = _timestamp(value, "expiry")
            elif name == "status":
                out[name] = value
            elif name == "name":
                if not isinstance(value, str) or not value.strip() or len(value) > 200:
                    raise OperationError("a key name must be 1 to 200 characters")
                out[name] = value
            else:
                raise OperationError(f"unknown key setting {name}")
        return out

    async def credit(self, account: str, usd: str, note: str) -> dict[str, Any]:
        acct = await self._account(account)
        try:
            await self.ledger.credit(acct["id"], parse_usd(usd, "credit"), note.strip() or "operator credit")
        except ValueError as exc:  # the ledger's refusal: not positive, or past the largest balance
            raise OperationError(str(exc)) from None
        return public_account(await self.db.run(store.tx_account, acct["id"]))

    async def adjust(self, account: str, usd: str, note: str) -> dict[str, Any]:
        note = note.strip()
        if not note:
            raise OperationError("an adjustment needs a reason")
        acct = await self._account(account)
        amount = parse_usd(usd, "adjustment")
        if amount == 0:
            raise OperationError("adjustment: an adjustment of 0 changes nothing")
        try:
            await self.ledger.adjust(acct["id"], amount, note)
        except ValueError as exc:
            raise OperationError(str(exc)) from None
        return public_account(await self.db.run(store.tx_account, acct["id"]))

    async def wallet(self, account: str) -> dict[str, Any]:
        return public_account(await self._account(account))

    async def history(self, account: str, limit: int = 50) -> list[dict[str, Any]]:
        acct = await self._account(account)
        rows = await self.db.run(store.tx_history, acct["id"], max(1, min(limit, MAX_ROWS)))
        return [_money(e, "balance_delta", "held_delta") for e in rows]

    async def usage(self, account: str | None, key_id: int | None, month: str | None) -> list[dict[str, Any]]:
        since, until = _month_range(month)
        if key_id is not None:
            _key_id(key_id)
        account_id = (await self._account(account))["id"] if account else None
        if key_id is not None and account_id is None:  # a key's usage is read through its account's index
            try:
                account_id = (await self.db.run(store.tx_key, key_id))["account_id"]
            except LookupError:
                raise NotFoundError(f"no key {key_id}") from None
        rows = await self.db.run(store.tx_usage, account_id, key_id, since, until)
        return [_money(r, "cost", "savings") for r in rows]

    async def request_usage(self, request_id: str, owner: int | None = None) -> dict[str, Any]:
        row = await self.db.run(store.tx_request_usage, request_id, owner)
        if row is None:
            raise OperationError(f"no usage row for {request_id!r}: requests refused before a hold (401, 402, 403, "
                                 "429) are only in the request log")
        return _money(row, "cost", "unbilled", "savings", "overrun")

    async def usage_log(self, account_id: int, filters: dict[str, Any], since: float | None = None,
                        until: float | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """An account's requests, newest first (see store.tx_usage_log for the filters)."""
        rows = await self.db.run(store.tx_usage_log, account_id, filters, since, until, max(1, min(limit, 100_000)),
                                 max(0, offset))
        return [_money(r, "cost", "unbilled", "savings", "overrun") for r in rows]

    async def daily_spend(self, account_id: int, days: int, now: float | None = None) -> list[tuple[str, int]]:
        """The last `days` UTC days, oldest first, each with what the account spent that day (nano-dollars)."""
        today = int((now if now is not None else time.time()) // 86400)
        spent = await self.db.run(store.tx_daily_spend, account_id, float((today - days + 1) * 86400))
        return [(time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), spent.get(day, 0))
                for day in range(today - days + 1, today + 1)]

    async def month_spend_by_key(self, account_id: int, now: float | None = None) -> dict[int, int]:
        """What each key of the account spent this calendar month (UTC): what its monthly limit counts."""
        month = time.strftime("%Y-%m", time.gmtime(now if now is not None else time.time()))
        return await self.db.run(store.tx_month_spend_by_key, account_id, month)

    # -- USDT recharge ------------------------------------------------------------------------

    def _chain(self, name: str) -> Any:
        chain = self.chains.get(name)
        if chain is None:
            raise OperationError(f"no chain {_shown(name)} is configured (configured: "
                                 f"{', '.join(sorted(self.chains)) or 'none'})")
        return chain

    async def recharge_address(self, account: str, chain_name: str) -> dict[str, Any]:
        """The account's own deposit address on a chain: m/44'/coin'/account'/0/<account id>, recorded so the
        watcher looks for transfers to it. Any amount sent to it, at any time, credits this account."""
        from billing.recharge import addresses

        chain = self._chain(chain_name)
        acct = await self._account(account)
        shown = addresses.deposit_address(chain.xpub, chain.kind, acct["id"])
        stored = addresses.tron_to_evm(shown) if chain.kind == "tron" else addresses.evm_key(shown)
        await self.db.run(store.tx_deposit_address, chain.name, acct["id"], stored, acct["id"], time.time())
        coin = 195 if chain.kind == "tron" else 60
        return {"account": acct["name"], "chain": chain.name, "address": shown,
                "derivation_path": f"m/44'/{coin}'/<account>'/0/{acct['id']}"}

    async def deposits(self, account: str | None, limit: int = 100, status: str | None = None,
                       without_order: bool = False) -> list[dict[str, Any]]:
        """Recharge records: every deposit seen (or those of one status, or those tied to no order), newest first,
        with its amount, status and credit."""
        from billing.recharge import addresses, amounts

        account_id = (await self._account(account))["id"] if account else None
        out = []
        for row in await self.db.run(store.tx_deposits, account_id, max(1, min(limit, 1000)), status, without_order):
            chain = self.chains.get(row["chain"])
            decimals = chain.decimals if chain is not None else 6
            if chain is not None and chain.kind == "tron":
                row["address"] = addresses.evm_to_tron(row["address"])
            row["amount"] = amounts.tokens(int(row.pop("amount_raw")), decimals)
            row["confirmations"] = store.confirmations(row, chain.confirmations) if chain is not None else None
            row.pop("chain_head", None)
            out.append(_money(row, "credit"))
        return out

    async def orders(self, account: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """Recharge orders, newest first: what each account asked to pay, and what became of it."""
        from billing.recharge import addresses, amounts

        account_id = (await self._account(account))["id"] if account else None
        out = []
        for row in await self.db.run(store.tx_all_orders, account_id, time.time(), max(1, min(limit, 1000))):
            chain = self.chains.get(row["chain"])
            if chain is not None and chain.kind == "tron":
                row["address"] = addresses.evm_to_tron(row["address"])
            row["amount"] = amounts.tokens(int(row.pop("amount_raw")), chain.decimals if chain is not None else 6)
            out.append(row)
        return out

    async def credit_deposit(self, deposit_id: int, note: str) -> dict[str, Any]:
        """An operator's credit of a deposit the watcher does not credit (below the minimum), with the reason."""
        if not note.strip():
            raise OperationError("a manual credit needs a reason")
        credited = None
        if whole_number(deposit_id, 1, MAX_ID) is not None:  # past any id: it does not exist
            credited = await self.ledger.credit_deposit(deposit_id, note.strip())
        if credited is None:
            raise OperationError(f"deposit {deposit_id} cannot be credited: it does not exist, or it is already "
                                 "credited, dropped, or still waiting for its confirmations")
        return _money({"deposit_id": deposit_id, "credited": credited}, "credited")

    async def rescan(self, chain_name: str, from_block: int) -> dict[str, Any]:
        """Move a chain's scan cursor back, so the watcher reads those blocks again (nothing is credited twice)."""
        chain = self._chain(chain_name)
        if whole_number(from_block, 0, MAX_ID) is None:
            raise OperationError(f"a block number is a whole number from 0 to {MAX_ID}")
        cursor = await self.db.run(store.tx_rewind_cursor, chain.name, from_block, time.time())
        return {"chain": chain.name, "next_block": cursor}

    # -- console log-ins -----------------------------------------------------------------------

    async def create_user(self, email: str, password: str, account: str | None = None,
                          role: str = "user") -> dict[str, Any]:
        """A console log-in for an account (by id or name), or with account None a new empty account named after
        the address. The operator's command: says so when the address is taken (sign-up never does: sign_up)."""
        address = _new_login(email, password)
        if role not in ("user", "operator"):
            raise OperationError("a role is user or operator")
        account_id = (await self._account(account))["id"] if account else None
        made = await self._insert_user(address, password, account_id, role)
        if made is None:
            raise OperationError(f"{address} is already registered (or an account has that name)")
        return made

    async def sign_up(self, email: str, password: str) -> dict[str, Any] | None:
        """Sign-up: a log-in with a new empty account named after the address; None, with nothing made or changed,
        when the address is registered already (or an account has that name). The caller answers both alike, and
        both cost the same: the password is hashed before the insert is tried, and nothing is looked up first."""
        return await self._insert_user(_new_login(email, password), password, None, "user")

    async def _insert_user(self, address: str, password: str, account_id: int | None,
                           role: str) -> dict[str, Any] | None:
        from core.console import security

        hashed = await self._scrypt(security.hash_password, password)
        try:
            return await self.db.run(store.tx_create_user, address, hashed, account_id, role, time.time())
        except sqlite3.IntegrityError:
            return None

    async def list_users(self, account: str | None = None) -> list[dict[str, Any]]:
        account_id = (await self._account(account))["id"] if account else None
        return await self.db.run(store.tx_list_users, account_id)

    async def set_password(self, user: str, password: str, keep_session: bytes | None = None) -> dict[str, Any]:
        """A new password; every other session of the user ends."""
        from core.console import security

        problem = security.password_problem(password)
        if problem:
            raise OperationError(problem)
        found = await self._user(user)
        hashed = await self._scrypt(security.hash_password, password)
        await self.db.run(store.tx_set_password, found["id"], hashed, time.time(), keep_session)
        return found

    async def set_role(self, user: str, role: str) -> dict[str, Any]:
        if role not in ("user", "operator"):
            raise OperationError("a role is user or operator")
        return await self.db.run(store.tx_set_role, (await self._user(user))["id"], role)

    async def _user(self, ref: str) -> dict[str, Any]:
        try:
            return await self.db.run(store.tx_find_user, ref)
        except LookupError as exc:
            raise OperationError(str(exc)) from None

    async def upstream_health(self, minutes: int, now: float | None = None) -> list[dict[str, Any]]:
        """Each provider's upstream attempts and failures over the last `minutes`, added up across workers
        (written every few seconds by each), with the failure rate in percent."""
        since = int((now if now is not None else time.time()) // 60) - minutes + 1
        rows = await self.db.run(store.tx_upstream_health, since)
        for row in rows:
            row["error_rate"] = round(100 * row["errors"] / row["requests"], 1) if row["requests"] else 0.0
        return rows

    async def holds(self) -> list[dict[str, Any]]:
        return [_money(h, "amount") for h in await self.db.run(store.tx_open_holds)]

    async def bootstrap_demo(self, balance: int) -> str | None:
        """On a database with no account: a demo account with `balance` and one key, whose plaintext
        is returned to be shown once."""
        if balance <= 0:
            return None
        key = new_key()
        return key.plaintext if await self.ledger.open_demo_account(key, balance) else None


def _new_login(email: str, password: str) -> str:
    """The address of a new log-in as stored, its password checked; OperationError says what is wrong (the same
    for every address, registered or not)."""
    from core.console import security

    address = security.normal_email(email)
    if address is None:
        raise OperationError(f"{email.strip()[:security.EMAIL_MAX]!r} is not an e-mail address")
    problem = security.password_problem(password)
    if problem:
        raise OperationError(problem)
    return address


def _shown(value: Any) -> str:
    """Operator input quoted in a refusal, cut short."""
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _key_id(key_id: int) -> None:
    if whole_number(key_id, 1, MAX_ID) is None:  # past any id: no key has it (and SQLite could not compare it)
        raise NotFoundError(f"no key {key_id}")


def _timestamp(text: str, what: str = "date") -> int:
    """An ISO date or date-time (UTC unless it says otherwise) from 1970 to 2999, as seconds since 1970: a moment
    every later read of it (pages, dates in refusals) can show."""
    try:
        if not text.isascii():
            raise ValueError
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise OperationError(f"{what}: {_shown(text)} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        inside = EARLIEST <= dt < LATEST  # an offset can carry year 1 or 9999 past the calendar's ends
    except OverflowError:
        inside = False
    if not inside:
        raise OperationError(f"{what}: {_shown(text)} is out of range: give a moment from 1970-01-01 to 2999-12-31")
    return int(dt.timestamp())


def _month_range(month: str | None) -> tuple[float, float]:
    now = datetime.now(timezone.utc)
    if month:
        found = _MONTH_TEXT.fullmatch(month)
        if not found or not 1 <= int(found[2]) <= 12 or not EARLIEST.year <= int(found[1]) < LATEST.year:
            raise OperationError(f"{_shown(month)} is not a month like 2026-11 (from 1970-01 to 2999-12)")
        start = datetime(int(found[1]), int(found[2]), 1, tzinfo=timezone.utc)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return start.timestamp(), end.timestamp()

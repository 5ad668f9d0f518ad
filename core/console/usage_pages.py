"""The Usage pages: an account's request log with filters (key, model, date range, status, usage source), search by
request id, one request's cost breakdown, and the CSV export of what the filters select."""

from __future__ import annotations

import calendar
import csv
import io
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from billing.metering import Usage
from billing.pricing import TOKENS_PER_PRICE, TokenPrices, ceil_div, token_cost
from core.config import Model
from core.console.web import MAX_ID, ConsoleWeb, FormError, NotFound, Visitor
from core.operations import OperationError, whole_number
from core.response_cache import hit_prices

PAGE_ROWS = 100
CSV_MAX_ROWS = 100_000
CSV_BATCH = 5_000
MAX_OFFSET = 10_000_000
MAX_TEXT = 200  # the longest model name or request id a filter or search takes
FILTER_FIELDS = ("key", "model", "from", "to", "status", "source")
SOURCE_MEANING = {
    "upstream": "the provider's own figures",
    "observed": "counted by the gateway from the answer as it streamed (the client left, or the provider sent none)",
    "estimate": "the gateway's estimate of the prompt (the client left before any answer was seen)",
    "cache": "served from the gateway's response cache: every token at the model's cache-read price",
    "none": "nothing to charge: the provider did no work",
}
CSV_COLUMNS = ("request_id", "time_utc", "key_id", "key_name", "model", "status", "source", "input_tokens",
               "output_tokens", "cache_read_tokens", "cache_write_tokens", "units", "cost_usd", "unbilled_usd",
               "savings_usd", "duration_ms", "overrun_tokens", "overrun_usd")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits: \d also takes other scripts' digits
STATUS = re.compile(r"[0-9]{3}")
HEADER_NAME = re.compile(r"^\s*x-tt-request-id\s*:", re.IGNORECASE)
SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Selection:
    """What a query's filters select, as Operations.usage_log takes it, and the values entered (shown again)."""

    filters: dict[str, Any]
    since: float | None
    until: float | None
    entered: dict[str, str]


def read_filters(query: Mapping[str, str], key_ids: set[int]) -> Selection:
    """The filter fields of a query string; FormError names the first one that cannot be read. Days are UTC days,
    both ends included."""
    entered = {name: query.get(name, "").strip() for name in FILTER_FIELDS}
    filters: dict[str, Any] = {}
    if entered["key"]:
        key_id = whole_number(entered["key"], 0, MAX_ID)
        if key_id is None or key_id not in key_ids:
            raise FormError(f"Key: there is no key {entered['key'][:MAX_TEXT]!r} among yours.")
        filters["key_id"] = key_id
    if entered["model"]:
        if len(entered["model"]) > MAX_TEXT:
            raise FormError(f"Model: a model name has at most {MAX_TEXT} characters.")
        filters["model"] = entered["model"]
    if entered["status"]:
        filters["status"] = _status(entered["status"])
    if entered["source"]:
        if entered["source"] not in SOURCE_MEANING:
            raise FormError(f"Source: one of {', '.join(SOURCE_MEANING)}, not {entered['source'][:MAX_TEXT]!r}.")
        filters["source"] = entered["source"]
    since = _day_start(entered["from"], "From") if entered["from"] else None
    until = _day_start(entered["to"], "To") + 86400 if entered["to"] else None
    if since is not None and until is not None and since >= until:
        raise FormError("From: the first day comes after the last.")
    return Selection(filters, since, until, entered)


def _status(text: str) -> str | int:
    word = text.lower()
    if word in ("ok", "error"):
        return word
    if STATUS.fullmatch(word) and 100 <= int(word) <= 599:
        return int(word)
    raise FormError(f"Status: 'ok' (below 400), 'error' (400 and above) or one HTTP status such as 429, "
                    f"not {text[:MAX_TEXT]!r}.")


def _day_start(text: str, label: str) -> float:
    """A YYYY-MM-DD day's first second, UTC."""
    try:
        if not DAY.fullmatch(text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise FormError(f"{label}: {text[:MAX_TEXT]!r} is not a date; write it as YYYY-MM-DD.") from None
    return float(calendar.timegm(day.timetuple()))


def read_offset(text: str) -> int:
    if not text:
        return 0
    offset = whole_number(text, 0, MAX_OFFSET)
    if offset is None:
        raise FormError(f"Offset: a whole number from 0 to {MAX_OFFSET}, in digits 0-9.")
    return offset


def searched_id(text: str) -> str:
    """A request id as support asks for it: pasted alone, or with its header name ("X-TT-Request-ID: req_…")."""
    return HEADER_NAME.sub("", text).strip()


def query_string(entered: Mapping[str, str], **extra: Any) -> str:
    """The filters entered (and `extra`) as a query string, for links that keep them."""
    pairs = [(name, value) for name, value in {**entered, **extra}.items() if value not in ("", None, 0)]
    return urllib.parse.urlencode(pairs)


# -- one request's cost ---------------------------------------------------------------------

@dataclass(frozen=True)
class CostPart:
    kind: str
    tokens: int
    price: int  # nano-dollars per 1M tokens
    cost: int  # nano-dollars


PARTS = (("Input", "input"), ("Output", "output"), ("Cache read", "cache_read"), ("Cache write", "cache_write"))


def cost_parts(prices: TokenPrices, usage: Usage) -> list[CostPart]:
    """token_cost split into input (less cache reads and writes), output, cache read and cache write.

    The tokens of each kind are what token_cost prices them as (token_cost at a price of one unit per token of that
    kind only). Rounding, integers only: billing/pricing.py rounds a request's cost up once, to a whole nano-dollar;
    here each part is the rise of that rounded-up running total, in the order above, so the parts add up to exactly
    token_cost(prices, usage) and each is within a nano-dollar of its exact share."""
    parts = []
    running = so_far = 0  # the exact running total (nano-dollars x 1M), and the parts so far
    for label, kind in PARTS:
        tokens = token_cost(TokenPrices(**{kind: TOKENS_PER_PRICE}), usage)
        price = getattr(prices, kind)
        running += tokens * price
        cost = ceil_div(running, TOKENS_PER_PRICE) - so_far
        so_far += cost
        parts.append(CostPart(label, tokens, price, cost))
    return parts


def row_usage(row: Mapping[str, Any]) -> Usage:
    return Usage(int(row["input_tokens"]), int(row["output_tokens"]), int(row["cache_read_tokens"]),
                 int(row["cache_write_tokens"]))


def breakdown(row: Mapping[str, Any], models: Mapping[str, Model]) -> tuple[list[CostPart] | None, str]:
    """The row's cost split by today's prices of its model (a cache hit's prices for a hit), or why there is no
    split to show."""
    model = models.get(row["model"])
    tokens = row["input_tokens"] + row["output_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"]
    if row["source"] == "none":
        return None, "Nothing to split: nothing was charged."
    if row["source"] == "estimate" and not tokens:
        return None, ("The safety net closed this request's hold at its prompt estimate: the request never "
                      "reported its end.")
    if row["units"] or not tokens:
        return None, "Priced per image, per second of video or per task, not by the token."
    if model is None:
        return None, f"The model {row['model']} is no longer configured: only the charge recorded is known."
    prices = hit_prices(model.prices) if row["source"] == "cache" else model.prices
    return cost_parts(prices, row_usage(row)), ""


# -- CSV ------------------------------------------------------------------------------------

def csv_text(rows: list[dict[str, Any]], header: bool = False) -> bytes:
    """Rows as CSV (RFC 4180 line ends): money as exact decimal USD, time as ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r["request_id"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["created_at"])),
            "" if r["key_id"] is None else r["key_id"], _cell(r["key_name"]), _cell(r["model"]), r["status"],
            r["source"], r["input_tokens"], r["output_tokens"], r["cache_read_tokens"], r["cache_write_tokens"],
            r["units"], r["cost_usd"], r["unbilled_usd"], r["savings_usd"],
            "" if r["duration_ms"] is None else r["duration_ms"], r["overrun_tokens"], r["overrun_usd"]])
    return out.getvalue().encode()


def _cell(text: str | None) -> str:
    """A name as a spreadsheet shows it, never as a formula it runs."""
    text = text or ""
    return "'" + text if text.startswith(SPREADSHEET_FORMULA) else text


def routes(web: ConsoleWeb) -> list[Route]:
    ops = web.ops

    async def usage_list(request: Request, v: Visitor) -> Response:
        keys = await ops.list_keys(str(v.account_id))
        entered = {name: request.query_params.get(name, "").strip() for name in FILTER_FIELDS}
        wanted = searched_id(request.query_params.get("request_id", ""))
        try:
            sel = read_filters(request.query_params, {int(k["id"]) for k in keys})
            offset = read_offset(request.query_params.get("offset", "").strip())
        except FormError as exc:
            return page(request, v, keys, entered, wanted, None, 0, str(exc), 400)
        if wanted and await owns(wanted, v):
            return RedirectResponse("/console/usage/" + urllib.parse.quote(wanted, safe=""), status_code=303)
        found = await ops.usage_log(v.account_id, sel.filters, sel.since, sel.until, PAGE_ROWS + 1, offset)
        if wanted:
            return page(request, v, keys, entered, wanted, found, offset,
                        f"No request of yours has the id {wanted[:MAX_TEXT]!r}.", 404)
        return page(request, v, keys, entered, wanted, found, offset, None, 200)

    async def owns(request_id: str, v: Visitor) -> bool:
        if len(request_id) > MAX_TEXT:  # longer than any request id the gateway gives
            return False
        try:
            await ops.request_usage(request_id, owner=v.account_id)
        except OperationError:
            return False
        return True

    def page(request: Request, v: Visitor, keys: list[dict[str, Any]], entered: dict[str, str], wanted: str,
             found: list[dict[str, Any]] | None, offset: int, problem: str | None, status: int) -> Response:
        """The request log: the filters as entered, a page of rows (None: the filters could not be read)."""
        models = sorted(web.settings.models)
        if entered["model"] and entered["model"] not in models:
            models.append(entered["model"])
        more = found is not None and len(found) > PAGE_ROWS
        context = dict(keys=keys, models=models, sources=SOURCE_MEANING, entered=entered, wanted=wanted,
                       rows=found[:PAGE_ROWS] if found is not None else None, first=offset + 1, problem=problem,
                       older=query_string(entered, offset=offset + PAGE_ROWS) if more else None,
                       newer=query_string(entered, offset=max(offset - PAGE_ROWS, 0)) if offset else None,
                       csv_query=query_string(entered), csv_max=CSV_MAX_ROWS)
        if status == 200:
            return web.show(request, v, "usage.html", **context)
        return web.render(v, "usage.html", status, **context)

    async def usage_detail(request: Request, v: Visitor) -> Response:
        try:
            row = await ops.request_usage(request.path_params["request_id"], owner=v.account_id)
        except OperationError:
            raise NotFound from None
        parts, why_not = breakdown(row, web.settings.models)
        return web.show(request, v, "usage_detail.html", r=row, parts=parts, why_not=why_not,
                        priced=sum(p.cost for p in parts) if parts is not None else None,
                        billed=row["cost"] + row["unbilled"] + row["overrun"],
                        meaning=SOURCE_MEANING.get(row["source"], ""))

    async def usage_csv(request: Request, v: Visitor) -> Response:
        keys = await ops.list_keys(str(v.account_id))
        try:
            sel = read_filters(request.query_params, {int(k["id"]) for k in keys})
        except FormError as exc:
            return web.error(v, 400, str(exc))
        until = min(sel.until, time.time()) if sel.until is not None else time.time()  # rows after now: not here
        beyond = await ops.usage_log(v.account_id, sel.filters, sel.since, until, 1, CSV_MAX_ROWS)
        name = time.strftime("tokentoll-usage-%Y%m%dT%H%M%SZ.csv", time.gmtime())
        headers = {"content-disposition": f'attachment; filename="{name}"'}
        if beyond:
            headers["x-tt-rows-truncated"] = str(CSV_MAX_ROWS)
        return StreamingResponse(csv_batches(v.account_id, sel, until), media_type="text/csv; charset=utf-8",
                                 headers=headers)

    async def csv_batches(account_id: int, sel: Selection, until: float) -> AsyncIterator[bytes]:
        """The header, then the rows newest first, a batch at a time, up to CSV_MAX_ROWS."""
        yield csv_text([], header=True)
        offset = 0
        while offset < CSV_MAX_ROWS:
            batch = await ops.usage_log(account_id, sel.filters, sel.since, until,
                                        min(CSV_BATCH, CSV_MAX_ROWS - offset), offset)
            if batch:
                yield csv_text(batch)
            if len(batch) < CSV_BATCH:
                return
            offset += len(batch)

    return [
        Route("/usage", web.page(usage_list), methods=["GET"]),
        Route("/usage.csv", web.page(usage_csv), methods=["GET"]),
        Route("/usage/{request_id}", web.page(usage_detail), methods=["GET"]),
    ]

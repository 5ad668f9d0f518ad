"""The console's Usage pages over HTTP against a real gateway: the request log and each of its filters, the search by
request id, one request's cost breakdown (its parts add up to the charge), the CSV export, another account's request
kept out of sight, bad filters refused with a 400; and the pure parts (the split of a cost, the filter reading)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from billing.metering import Usage
from billing.pricing import TokenPrices, token_cost
from core.config import load as load_settings
from core.console.usage_pages import CSV_COLUMNS, breakdown, cost_parts, csv_text, read_filters, searched_id
from core.console.web import FormError, usd_text
from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for
from tests.console_client import ConsoleClient

NANO = 10**9
# demo-echo: round prices; demo-odd: prices finer than a nano-dollar per token, so every cost is rounded up.
MODELS = """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.50", output = "1.50", cache_read = "0.05" }

[models.demo-odd]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "1.2345678", output = "2.3456789" }

[providers.nowhere]
format = "openai"
base_url = "http://127.0.0.1:9/v1"
timeouts = { connect = 1, first_byte = 1, idle = 1, total = 5 }

[models.unreachable]
provider = "nowhere"
upstream_model = "gpt-x"
price = { input = "1", output = "1" }
"""
PRICES = {"demo-echo": (500_000_000, 1_500_000_000, 50_000_000),  # nano-dollars per 1M: input, output, cache read
          "demo-odd": (1_234_567_800, 2_345_678_900, 1_234_567_800)}
CHUNK_DELAY = 1.0  # seconds between the demo's stream chunks: the client leaving after the first one
# must be gone before the second (source "estimate"), even on a loaded machine
LONG_TEXT = " ".join(f"word{i}" for i in range(200))  # a streamed echo long enough to leave in the middle


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("usage", [Usage(1000, 500), Usage(1234, 77, cache_read=300, cache_write=45),
                                   Usage(7, 3, cache_read=10), Usage(0, 0), Usage(999_999, 1, cache_write=999_999)])
def test_cost_parts_add_up_to_the_charge_and_round_each_part_by_less_than_a_unit(usage: Usage) -> None:
    prices = TokenPrices(input=1_234_567_800, output=2_345_678_900, cache_read=123_456_780, cache_write=1_543_209_750)
    parts = cost_parts(prices, usage)
    assert [p.kind for p in parts] == ["Input", "Output", "Cache read", "Cache write"]
    assert sum(p.cost for p in parts) == token_cost(prices, usage)
    cached = min(usage.cache_read + usage.cache_write, usage.in_total)
    read = min(usage.cache_read, cached)
    assert [p.tokens for p in parts] == [usage.in_total - cached, usage.out_total, read, cached - read]
    for p in parts:
        exact = p.tokens * p.price  # in millionths of a nano-dollar
        assert abs(p.cost * 1_000_000 - exact) < 1_000_000, p


def test_cost_parts_of_round_prices_are_exact() -> None:
    parts = cost_parts(TokenPrices(input=500_000_000, output=1_500_000_000, cache_read=50_000_000,
                                   cache_write=625_000_000), Usage(1000, 200, cache_read=400, cache_write=100))
    assert [(p.tokens, p.cost) for p in parts] == [(500, 250_000), (200, 300_000), (400, 20_000), (100, 62_500)]


def test_filters_are_read_strictly() -> None:
    sel = read_filters({"key": "7", "model": "m", "from": "2024-02-28", "to": "2024-02-29", "status": "ERROR",
                        "source": "cache"}, {7})
    assert sel.filters == {"key_id": 7, "model": "m", "status": "error", "source": "cache"}
    assert (sel.since, sel.until) == (1709078400.0, 1709251200.0)  # both UTC days, the last one included
    assert read_filters({"status": "429"}, set()).filters == {"status": 429}
    assert read_filters({}, set()).filters == {} and read_filters({}, set()).since is None
    for bad in ({"key": "8"}, {"key": "x"}, {"from": "2024-02-30"}, {"to": "yesterday"}, {"from": "20240101"},
                {"status": "fine"}, {"status": "99"}, {"status": "1000"}, {"source": "guess"},
                {"from": "2024-03-02", "to": "2024-03-01"}, {"model": "m" * 201}):
        with pytest.raises(FormError):
            read_filters(bad, {7})
    assert searched_id("  X-TT-Request-ID: req_abc ") == "req_abc" and searched_id("req_abc") == "req_abc"


def test_a_breakdown_only_where_a_request_was_priced_by_the_token(tmp_path: Path) -> None:
    models = settings_of(tmp_path).models
    row = {"model": "demo-echo", "source": "upstream", "input_tokens": 1000, "output_tokens": 200,
           "cache_read_tokens": 0, "cache_write_tokens": 0, "units": 0, "cost": 550_000, "unbilled": 0}
    parts, _ = breakdown(row, models)
    assert parts is not None and [p.cost for p in parts] == [500_000, 300_000, 0, 0]
    hit, _ = breakdown({**row, "source": "cache", "cache_read_tokens": 1200}, models)
    assert hit is not None and [(p.tokens, p.price) for p in hit if p.tokens] == [(200, 50_000_000), (1000, 50_000_000)]
    for changed, says in (({"source": "none", "input_tokens": 0, "output_tokens": 0, "cost": 0}, "nothing was charged"),
                          ({"source": "estimate", "input_tokens": 0, "output_tokens": 0}, "safety net"),
                          ({"units": 2, "input_tokens": 0, "output_tokens": 0}, "per image"),
                          ({"model": "gone"}, "no longer configured")):
        parts, why_not = breakdown({**row, **changed}, models)
        assert parts is None and says in why_not


def test_csv_cells_never_become_spreadsheet_formulas() -> None:
    row = {"request_id": "req_1", "created_at": 86400.5, "key_id": None, "key_name": "=HYPERLINK(1)",
           "model": "+m", "status": 200, "source": "upstream", "input_tokens": 1, "output_tokens": 2,
           "cache_read_tokens": 0, "cache_write_tokens": 0, "units": 0, "cost_usd": "0.000000001",
           "unbilled_usd": "0.000000000", "savings_usd": "0.000000000", "duration_ms": None, "overrun_tokens": 0,
           "overrun_usd": "0.000000000"}
    lines = csv_text([row], header=True).decode().splitlines()
    assert lines[1] == ("req_1,1970-01-02T00:00:00Z,,'=HYPERLINK(1),'+m,200,upstream,1,2,0,0,0,0.000000001,"
                        "0.000000000,0.000000000,,0,0.000000000")


# -- against a gateway --------------------------------------------------------------------------


@dataclass
class Made:
    """A request made through the gateway and what the test expects of its usage row."""

    request_id: str
    key: str
    model: str
    source: str
    status: int
    cost: int | None = None  # None: not known in advance (a stream left in the middle)

    @property
    def ok(self) -> bool:
        return self.status < 400


@dataclass
class World:
    gw: GatewayProcess
    alice: ConsoleClient
    bob: ConsoleClient
    keys: dict[str, int]  # alice's key name -> id
    bob_key_id: int
    made: list[Made]
    bob_request: str
    started: float
    ended: float


def config(log_path: Path) -> str:
    return base_config(log_path) + demo_provider(chunk_delay=CHUNK_DELAY) + MODELS


def settings_of(tmp: Path) -> Any:
    path = tmp / "config.toml"
    path.write_text(config(tmp / "requests.log"))
    return load_settings(path)


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def create_key(c: ConsoleClient, name: str) -> dict[str, Any]:
    r = c.post("/console/keys", {"name": name}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


def chat(gw: GatewayProcess, key: str, model: str, text: str, **extra: Any) -> tuple[str, Any]:
    raw = sdk(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **extra)
    reply = raw.parse()
    rid = raw.headers["x-tt-request-id"]
    gw.log_entry(rid)  # written after the request is settled
    return rid, reply


def left_stream(gw: GatewayProcess, key: str, model: str, after_text: bool) -> str:
    """A streamed answer the client leaves: after its first text (the gateway counted it: source "observed"), or
    after the first chunk, which has no text (the next one is CHUNK_DELAY away: source "estimate")."""
    with sdk(gw, key).chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": LONG_TEXT}], stream=True) as response:
        rid = response.headers["x-tt-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and (not after_text or text_of(line)):
                break
    gw.log_entry(rid)
    return rid


def failed(gw: GatewayProcess, key: str, model: str) -> str:
    """A request whose upstream cannot be reached: a 502, nothing charged."""
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": "anyone?"}])
    assert caught.value.status_code == 502
    rid = caught.value.response.headers["x-tt-request-id"]
    gw.log_entry(rid)
    return rid


def text_of(sse_line: str) -> str:
    choices = json.loads(sse_line.removeprefix("data: "))["choices"]
    return choices[0]["delta"].get("content") or "" if choices else ""


def expected_cost(model: str, usage: Any, cache_hit: bool = False) -> int:
    input_price, output_price, read_price = PRICES[model]
    if cache_hit:
        return ceil_div((usage.prompt_tokens + usage.completion_tokens) * read_price, 1_000_000)
    return ceil_div(usage.prompt_tokens * input_price + usage.completion_tokens * output_price, 1_000_000)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    gen = serve_gateway(tmp_path_factory.mktemp("usage-gw"), config, {}, "bystander", "1", ("Traceback",))
    gw = next(gen)
    alice, bob = ConsoleClient(gw.url), ConsoleClient(gw.url)
    alice.sign_up("alice@example.com")
    bob.sign_up("bob@example.com")
    alpha, beta, bobs = create_key(alice, "alpha"), create_key(alice, "beta"), create_key(bob, "bobs")
    for address in ("alice@example.com", "bob@example.com"):
        cli(gw.config, "wallet", "credit", address, "5", env=gw.env)
    started = time.time()
    made = []
    rid, reply = chat(gw, alpha["key"], "demo-echo", "hello one")
    made.append(Made(rid, "alpha", "demo-echo", "upstream", 200, expected_cost("demo-echo", reply.usage)))
    rid, reply = chat(gw, alpha["key"], "demo-echo", "cache me", temperature=0)
    made.append(Made(rid, "alpha", "demo-echo", "upstream", 200, expected_cost("demo-echo", reply.usage)))
    rid, reply = chat(gw, alpha["key"], "demo-echo", "cache me", temperature=0)
    made.append(Made(rid, "alpha", "demo-echo", "cache", 200, expected_cost("demo-echo", reply.usage, True)))
    rid, reply = chat(gw, beta["key"], "demo-odd", "hello two, with odd prices")
    made.append(Made(rid, "beta", "demo-odd", "upstream", 200, expected_cost("demo-odd", reply.usage)))
    made.append(Made(left_stream(gw, beta["key"], "demo-odd", True), "beta", "demo-odd", "observed", 200))
    made.append(Made(left_stream(gw, alpha["key"], "demo-odd", False), "alpha", "demo-odd", "estimate", 200))
    made.append(Made(failed(gw, beta["key"], "unreachable"), "beta", "unreachable", "none", 502, 0))
    bob_request, _ = chat(gw, bobs["key"], "demo-echo", "bob's own")
    ended = time.time()
    yield World(gw, alice, bob, {"alpha": alpha["id"], "beta": beta["id"]}, bobs["id"], made, bob_request,
                started, ended)
    next(gen, None)


def listed(c: ConsoleClient, query: str = "") -> list[dict[str, str]]:
    """The rows of the usage page (the filters in `query`), each as {column title: cell text}."""
    r = c.get("/console/usage" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    table = re.search(r'<table class="usage">(.*?)</table>', r.text, re.S)
    if table is None:
        assert 'id="no-rows"' in r.text
        return []
    titles = [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<th[^>]*>(.*?)</th>", table.group(1), re.S)]
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1).split("<tbody>")[1], re.S)
    return [dict(zip(titles, (re.sub(r"<[^>]+>", "", cell).strip()
                              for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)))) for row in rows]


def ids(c: ConsoleClient, query: str = "") -> set[str]:
    return {row["Request ID"] for row in listed(c, query)}


def made_ids(w: World, **where: Any) -> set[str]:
    return {m.request_id for m in w.made if all(getattr(m, k) == v for k, v in where.items())}


def day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def usd(units: int) -> str:
    whole, frac = divmod(units, NANO)
    return f"{whole}.{frac:09d}"


def test_the_log_lists_every_request_of_the_account_newest_first_with_its_cost(world: World) -> None:
    rows = listed(world.alice)
    assert [r["Request ID"] for r in rows] == [m.request_id for m in reversed(world.made)]
    by_id = {r["Request ID"]: r for r in rows}
    for m in world.made:
        row = by_id[m.request_id]
        assert (row["Key"], row["Model"], row["Source"]) == (m.key, m.model, m.source)
        if m.cost is not None:
            assert row["Cost"] == "$" + usd_text(m.cost)
        assert row["Status"] == str(m.status)
    assert world.bob_request not in by_id


@pytest.mark.parametrize("name, query, expect", [
    ("key alpha", "key={alpha}", {"key": "alpha"}),
    ("key beta", "key={beta}", {"key": "beta"}),
    ("model", "model=demo-odd", {"model": "demo-odd"}),
    ("status ok", "status=ok", {"ok": True}),
    ("status error", "status=error", {"ok": False}),
    ("one status", "status=502", {"status": 502}),
    ("another status", "status=200", {"status": 200}),
    ("source upstream", "source=upstream", {"source": "upstream"}),
    ("source cache", "source=cache", {"source": "cache"}),
    ("source observed", "source=observed", {"source": "observed"}),
    ("source estimate", "source=estimate", {"source": "estimate"}),
    ("source none", "source=none", {"source": "none"}),
    ("key and status", "key={beta}&status=ok", {"key": "beta", "ok": True}),
    ("model and source", "model=demo-echo&source=upstream", {"model": "demo-echo", "source": "upstream"}),
])
def test_each_filter_narrows_the_log(world: World, name: str, query: str, expect: dict[str, Any]) -> None:
    wanted = made_ids(world, **expect)
    assert ids(world.alice, query.format(**world.keys)) == wanted
    assert wanted != made_ids(world) or not wanted  # the filter does select fewer than all


def test_the_date_range_is_inclusive_utc_days(world: World) -> None:
    first, last = day(world.started), day(world.ended)
    everything = made_ids(world)
    assert ids(world.alice, f"from={first}&to={last}") == everything
    assert ids(world.alice, f"from={first}") == everything and ids(world.alice, f"to={last}") == everything
    assert ids(world.alice, f"to={day(world.started - 86400)}") == set()
    assert ids(world.alice, f"from={day(world.ended + 86400)}") == set()


def test_searching_a_request_id_opens_its_breakdown_whose_parts_add_up_to_the_charge(world: World) -> None:
    for m in world.made:
        r = world.alice.get("/console/usage", params={"request_id": f"X-TT-Request-ID: {m.request_id}"})
        assert r.status_code == 303 and r.headers["location"] == f"/console/usage/{m.request_id}"
        page = world.alice.get(r.headers["location"]).text
        charged = int(re.search(r'id="charged" data-units="(\d+)"', page).group(1))
        assert f"<strong>{m.source}</strong>" in page and f'id="status">{m.status}<' in page
        if m.cost is not None:
            assert charged == m.cost
        parts = [int(x) for x in re.findall(r'<td class="num" data-units="(\d+)">', page)]
        if m.source == "none":
            assert charged == 0 and parts == [] and "nothing was charged" in page
            continue
        assert charged > 0 and len(parts) == 4 and sum(parts) == charged
        assert int(re.search(r'id="priced" data-units="(\d+)"', page).group(1)) == charged
        assert 'id="price-changed"' not in page
    hit = next(m for m in world.made if m.source == "cache")
    page = world.alice.get(f"/console/usage/{hit.request_id}").text
    assert "cache-read price" in page and 'id="savings"' in page


def test_a_request_id_not_of_the_account_is_not_found_like_a_missing_one(world: World) -> None:
    others = world.alice.get(f"/console/usage/{world.bob_request}")
    missing = world.alice.get("/console/usage/req_0000000000000000000000000")
    assert others.status_code == missing.status_code == 404
    assert others.text == missing.text and world.bob_request not in others.text
    searched = world.alice.get("/console/usage", params={"request_id": world.bob_request})
    assert searched.status_code == 404 and "No request of yours has the id" in searched.text
    assert world.bob.get(f"/console/usage/{world.bob_request}").status_code == 200
    assert ids(world.bob) == {world.bob_request}


def test_the_csv_holds_the_selected_rows_with_exact_usd(world: World) -> None:
    r = world.alice.get("/console/usage.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="tokentoll-usage-\d{8}T\d{6}Z\.csv"', r.headers["content-disposition"])
    table = list(csv.reader(io.StringIO(r.text)))
    assert tuple(table[0]) == CSV_COLUMNS
    rows = [dict(zip(CSV_COLUMNS, line)) for line in table[1:]]
    assert [row["request_id"] for row in rows] == [m.request_id for m in reversed(world.made)]
    for m, row in zip(reversed(world.made), rows):
        assert (row["key_name"], row["model"], row["source"]) == (m.key, m.model, m.source)
        assert row["key_id"] == str(world.keys[m.key]) and re.fullmatch(r"\d+\.\d{9}", row["cost_usd"])
        assert row["status"] == str(m.status) and row["unbilled_usd"] == "0.000000000"
        if m.cost is not None:
            assert row["cost_usd"] == usd(m.cost)
        assert (int(row["input_tokens"]) > 0) == (m.source != "none")
    narrowed = world.alice.get("/console/usage.csv", params={"key": str(world.keys["beta"]), "status": "ok"})
    assert [line[0] for line in csv.reader(io.StringIO(narrowed.text))][1:] == \
        sorted(made_ids(world, key="beta", ok=True), reverse=True)
    assert world.bob_request not in r.text


@pytest.mark.parametrize("query, says", [
    ("from=2024-13-45", "is not a date"), ("to=tomorrow", "is not a date"), ("status=fine", "Status:"),
    ("source=guess", "Source:"), ("key=abc", "Key:"), ("from=2024-03-02&to=2024-03-01", "comes after"),
    ("offset=-1", "Offset:")])
def test_bad_filters_are_a_400_with_a_message(world: World, query: str, says: str) -> None:
    r = world.alice.get(f"/console/usage?{query}")
    assert r.status_code == 400 and says in r.text and 'role="alert"' in r.text
    if not query.startswith("offset"):
        r = world.alice.get(f"/console/usage.csv?{query}")
        assert r.status_code == 400 and says in r.text


def test_another_accounts_key_is_no_filter(world: World) -> None:
    r = world.alice.get("/console/usage", params={"key": str(world.bob_key_id)})
    assert r.status_code == 400 and "no key" in r.text


def test_pages_of_a_hundred_rows_with_older_and_newer_links(world: World) -> None:
    key = create_key(world.bob, "many")["key"]
    client = sdk(world.gw, key)
    made = {client.chat.completions.with_raw_response.create(
        model="demo-echo", messages=[{"role": "user", "content": f"n{i}"}]).headers["x-tt-request-id"]
        for i in range(100)}
    wait_for(lambda: made <= {e["request_id"] for e in world.gw.log_entries()}, 15, "100 requests settled")
    first = world.bob.get("/console/usage")
    assert first.text.count('<a href="/console/usage/req_') == 100
    older = re.search(r'href="/console/usage\?([^"]+)" rel="next"', first.text)
    assert older and older.group(1) == "offset=100" and 'rel="prev"' not in first.text
    second = world.bob.get("/console/usage?offset=100")
    assert second.text.count('<a href="/console/usage/req_') == 1 and world.bob_request in second.text
    assert 'rel="next"' not in second.text and 'href="/console/usage" rel="prev"' in second.text

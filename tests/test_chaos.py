"""Chaos: 200 concurrent mixed requests (the three client formats, stream and not, against models of the three
upstream formats and one with a channel of each) while the upstream fails, stalls, cuts streams and answers
429 and 500, and clients leave mid-stream; then kill -9 with streams in flight, a restart on the same books,
and the safety net. Afterwards no hold is open, nothing was charged twice, no balance is negative, and the
ledger adds up to the usage log. The plan comes from a seeded random: the seed is printed, and
TT_CHAOS_SEED=<seed> replays it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import orjson
import pytest

from tests.chaos_upstream import ChaosUpstream
from tests.conftest import GatewayProcess, cli, wait_for

pytestmark = pytest.mark.slow

REQUESTS = 200
LONG_STREAMS = 6  # still streaming when the gateway is killed
FORMATS = ("openai", "anthropic", "gemini")
MODELS = tuple(f"chaos-{f}" for f in FORMATS) + ("chaos-mix",)
# behaviour: weight (the upstream's misbehaviour, drawn per request)
WEIGHTS = {"ok": 30, "slow": 14, "fail": 8, "stall": 6, "cut": 12, "idle": 6, "429": 10, "500": 10}
DISCONNECT = 0.25  # the share of paced requests whose client leaves mid-way
FIRST_BYTE = 1.5
CREDIT_USD = 20
NANO = 10**9


def chaos_config(upstream: str, tmp: Path) -> str:
    version = {"openai": "v1", "anthropic": "v1", "gemini": "v1beta"}
    parts = [f"""
[server]
request_log = "{tmp / 'requests.log'}"

[billing]
database = "{tmp / 'tokentoll.db'}"
hold_ttl = 45            # longer than any request may last: only the dead process's lapsed heartbeat closes holds early
sweep_interval = 0.2

[routing]
breaker_failures = 1000  # keep every channel in the rotation: the chaos is the upstream's, not the breaker's
"""]
    for fmt in FORMATS:
        parts.append(f'[providers.up-{fmt}]\nformat = "{fmt}"\nbase_url = "{upstream}/{fmt}/{version[fmt]}"\n'
                     f'api_key_env = "TT_CHAOS_KEY"\n'
                     f'timeouts = {{ connect = 2, first_byte = {FIRST_BYTE}, idle = {FIRST_BYTE}, total = 12 }}\n')
        parts.append(f'[models.chaos-{fmt}]\nprovider = "up-{fmt}"\nupstream_model = "chaos-{fmt}"\n'
                     f'max_output_tokens = 200\nprice = {{ input = "3", output = "15" }}\n')
    # the long streams (one per format pair) outlive the load: a longer total timeout
    parts.append(f'[providers.up-long]\nformat = "openai"\nbase_url = "{upstream}/openai/v1"\napi_key_env = "TT_CHAOS_KEY"\n'
                 f'timeouts = {{ connect = 2, first_byte = 10, idle = 10, total = 40 }}\n')
    parts.append('[models.chaos-long]\nprovider = "up-long"\nupstream_model = "long"\nmax_output_tokens = 200\n'
                 'price = { input = "3", output = "15" }\n')
    parts.append('[models.chaos-mix]\nmax_output_tokens = 200\nprice = { input = "3", output = "15" }\nchannels = [\n'
                 + "".join(f'  {{ provider = "up-{f}", upstream_model = "mix-{f}", priority = 1 }},\n' for f in FORMATS)
                 + "]\n")
    return "\n".join(parts)


@dataclass
class Plan:
    n: int
    dialect: str
    model: str
    stream: bool
    behaviour: str
    leave: bool  # the client disconnects mid-way
    sse: bool = True  # Gemini streams: alt=sse, or one JSON array


@dataclass
class Outcome:
    plan: Plan
    status: int = 0  # 0: the client left before the status line
    request_id: str = ""
    complete: bool = False  # the stream reached its end marker (or a non-stream body parsed)
    in_band_error: bool = False
    left: bool = False
    error: str = ""
    events: list[bytes] = field(default_factory=list)


def make_plans(rng: random.Random) -> list[Plan]:
    names, weights = list(WEIGHTS), list(WEIGHTS.values())
    plans = []
    for n in range(REQUESTS):
        behaviour = rng.choices(names, weights)[0]
        stream = rng.random() < 0.6
        paced = behaviour == "slow" or (stream and behaviour == "ok")
        dialect = rng.choice(FORMATS)
        plans.append(Plan(n, dialect, rng.choice(MODELS), stream, behaviour,
                          paced and rng.random() < DISCONNECT, rng.random() < 0.7 or dialect != "gemini"))
    return plans


def request_for(base: str, key: str, plan: Plan, nonce: str) -> tuple[str, dict[str, str], bytes]:
    prompt = f"request {plan.n} chaos={plan.behaviour} nonce={nonce}"
    if plan.dialect == "openai":
        body: dict[str, Any] = {"model": plan.model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": 50, "stream": plan.stream}
        if plan.stream:
            body["stream_options"] = {"include_usage": True}
        return base + "/v1/chat/completions", {"authorization": f"Bearer {key}"}, orjson.dumps(body)
    if plan.dialect == "anthropic":
        body = {"model": plan.model, "max_tokens": 50, "messages": [{"role": "user", "content": prompt}],
                "stream": plan.stream}
        return base + "/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, orjson.dumps(body)
    method = ("streamGenerateContent?alt=sse" if plan.sse else "streamGenerateContent") if plan.stream \
        else "generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": {"maxOutputTokens": 50}}
    return f"{base}/v1beta/models/{plan.model}:{method}", {"x-goog-api-key": key}, orjson.dumps(body)


def stream_ended(dialect: str, data: list[bytes]) -> bool:
    if not data:
        return False
    if dialect == "openai":
        return data[-1] == b"[DONE]"
    if dialect == "anthropic":
        return b'"message_stop"' in data[-1]
    return b'"finishReason"' in data[-1]


async def run_one(session: aiohttp.ClientSession, base: str, key: str, plan: Plan,
                  upstream: ChaosUpstream) -> Outcome:
    if plan.leave and not plan.stream:  # gone while the gateway waits for the upstream's answer
        nonce = os.urandom(4).hex()
        task = asyncio.create_task(_run_one(session, base, key, plan, nonce))
        for _ in range(400):  # until the upstream has the request: the hold is placed, the answer not sent
            if nonce in upstream.nonces or task.done():
                break
            await asyncio.sleep(0.025)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return Outcome(plan, left=True)
    return await _run_one(session, base, key, plan)


async def _run_one(session: aiohttp.ClientSession, base: str, key: str, plan: Plan, nonce: str = "") -> Outcome:
    out = Outcome(plan)
    url, headers, body = request_for(base, key, plan, nonce or os.urandom(4).hex())
    headers["content-type"] = "application/json"
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            out.status = resp.status
            out.request_id = resp.headers.get("x-tt-request-id", "")
            if not plan.stream or resp.status != 200 or not plan.sse:
                raw = await resp.read()
                out.events = [raw]
                parsed = orjson.loads(raw)
                out.complete = resp.status == 200
                if resp.status == 200 and plan.stream:  # Gemini's JSON-array stream
                    out.complete = bool(parsed) and "finishReason" in str(parsed[-1])
                    parsed = parsed[-1] if parsed else {}
                out.in_band_error = resp.status == 200 and isinstance(parsed, dict) and "error" in parsed
                return out
            async for line in resp.content:
                line = line.rstrip(b"\r\n")
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                out.events.append(data)
                if b'"error"' in data and (data.startswith(b'{"error"') or b'"type":"error"' in data):
                    out.in_band_error = True
                if plan.leave and len(out.events) == 2:
                    out.left = True
                    resp.close()  # drops the connection: the gateway sees the client gone
                    return out
            out.complete = stream_ended(plan.dialect, out.events)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def expected(plan: Plan) -> tuple[int, str]:
    """(status, how the body ends) for a client that stays: 'complete', 'in-band' (an error event after
    the 200) or 'error' (an error status)."""
    b = plan.behaviour
    if b in ("ok", "slow") or (b == "idle" and not plan.stream):
        return 200, "complete"
    if b in ("cut", "idle") and plan.stream:
        return 200, "in-band"
    return {"fail": 502, "stall": 504, "cut": 502, "429": 429, "500": 502}[b], "error"


def relay_log_ids(gw: GatewayProcess) -> set[str]:
    return {e["request_id"] for e in gw.log_entries() if e.get("route", "").startswith("/v1")}


async def run_load(base: str, key: str, plans: list[Plan], long_plans: list[Plan], gw: GatewayProcess,
                   upstream: ChaosUpstream) -> tuple[list[Outcome], list[Outcome], float]:
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=50)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        longs = [asyncio.create_task(run_one(session, base, key, p, upstream)) for p in long_plans]
        started = time.monotonic()
        outcomes = await asyncio.gather(*(run_one(session, base, key, p, upstream) for p in plans))
        elapsed = time.monotonic() - started
        # the gateway has ended every one (those whose client left too): one log line each
        await asyncio.to_thread(wait_for, lambda: len(relay_log_ids(gw)) == REQUESTS, 15, "a log line per request")
        os.kill(gw.proc.pid, signal.SIGKILL)  # the long streams are mid-way: their holds are open
        long_outcomes = await asyncio.gather(*longs)
    return list(outcomes), list(long_outcomes), elapsed


@pytest.fixture()
def chaos_upstream() -> Iterator[ChaosUpstream]:
    server = ChaosUpstream().start()
    yield server
    server.stop()


def test_chaos_then_kill_9_then_the_books_add_up(chaos_upstream: ChaosUpstream, tmp_path: Path) -> None:
    seed = int(os.environ.get("TT_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    print(f"\nchaos seed: {seed} (replay with TT_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    plans = make_plans(rng)
    long_plans = [Plan(REQUESTS + i, FORMATS[i % 3], "chaos-long", True, "long", False)
                  for i in range(LONG_STREAMS)]
    config = tmp_path / "config.toml"
    config.write_text(chaos_config(chaos_upstream.base_url, tmp_path))
    env = {**os.environ, "TT_CHAOS_KEY": "chaos-upstream-key"}
    env.pop("TOKENTOLL_CONFIG", None)
    cli(config, "accounts", "create", "chaos", "--credit", str(CREDIT_USD), env=env)
    key = cli(config, "keys", "create", "--account", "chaos", env=env)["key"]
    first = GatewayProcess(config, tmp_path / "requests.log", env)
    try:
        outcomes, long_outcomes, elapsed = asyncio.run(run_load(first.url, key, plans, long_plans, first, chaos_upstream))
    finally:
        first.proc.kill()
    assert first.proc.wait(10) == -signal.SIGKILL
    open_at_kill = cli(config, "holds", env=env)
    assert len(open_at_kill) >= LONG_STREAMS, (open_at_kill, long_outcomes)

    second = GatewayProcess(config, tmp_path / "requests.log", env)
    try:
        wait_for(lambda: cli(config, "holds", env=env) == [], 20, "the safety net to close every hold")
    finally:
        second.stop()
    stderr = "".join(first.stderr_lines + second.stderr_lines)
    assert "Traceback" not in stderr, stderr

    # -- what the clients saw -------------------------------------------------------------------
    tally = Counter()
    wrong = []
    for o in outcomes:
        p = o.plan
        if p.leave:
            tally["client left"] += 1
            continue
        status, ending = expected(p)
        got = ("error" if o.status != 200 else "complete" if o.complete and not o.in_band_error
               else "in-band" if o.in_band_error else "silent end")
        tally[f"{o.status} {got}"] += 1
        if (o.status, got) != (status, ending):
            wrong.append(f"#{p.n} {p.dialect}->{p.model} stream={p.stream} {p.behaviour}: expected {status} "
                         f"{ending}, got {o.status} {got} {o.error} {o.events[-3:]}")
    print(f"chaos: {REQUESTS} requests + {LONG_STREAMS} long streams in {elapsed:.1f}s; outcomes: "
          f"{dict(sorted(tally.items()))}; upstream saw {dict(chaos_upstream.seen)}")
    assert not wrong, "\n".join(wrong)
    assert all(o.status == 200 and not o.complete for o in long_outcomes)  # cut by the kill, mid-way

    # -- the books -------------------------------------------------------------------------------
    db = sqlite3.connect(tmp_path / "tokentoll.db")
    q = lambda sql: db.execute(sql).fetchall()  # noqa: E731
    assert q("SELECT COUNT(*) FROM holds WHERE status = 'open'") == [(0,)]
    assert q("SELECT request_id FROM ledger WHERE kind = 'settle' GROUP BY request_id HAVING COUNT(*) > 1") == []
    holds = {r for (r,) in q("SELECT request_id FROM holds")}
    usage = {r for (r,) in q("SELECT request_id FROM usage")}
    assert holds == usage  # one usage row per request that was held, and no other
    seen_ids = {o.request_id for o in outcomes + long_outcomes if o.request_id}
    assert seen_ids <= holds
    assert len(holds) == REQUESTS + LONG_STREAMS  # every request was admitted, and once
    assert all(o.request_id for o in outcomes + long_outcomes if not o.plan.leave)
    logged = relay_log_ids(first)  # one line per request; the long streams died with the process
    assert holds <= logged | {o.request_id for o in long_outcomes}
    (balance, held), = q("SELECT balance, held FROM accounts WHERE name = 'chaos'")
    assert balance >= 0 and held == 0
    (spent,), = q("SELECT SUM(cost) FROM usage")
    (settled,), = q("SELECT -SUM(balance_delta) FROM ledger WHERE kind IN ('settle', 'adjustment') "
                    "AND request_id IS NOT NULL")
    (ledger_balance, ledger_held), = q("SELECT SUM(balance_delta), SUM(held_delta) FROM ledger")
    assert CREDIT_USD * NANO - balance == spent == settled
    assert (ledger_balance, ledger_held) == (balance, 0)
    by_id = {o.request_id: o for o in outcomes if o.request_id}
    costs = dict(q("SELECT request_id, cost FROM usage"))
    refused = [rid for rid, o in by_id.items() if o.status in (429,) or
               (o.status == 502 and o.plan.behaviour == "500")]
    assert all(costs[rid] == 0 for rid in refused)  # a request the upstream refused costs nothing
    (by_net,), = q("SELECT COUNT(*) FROM holds WHERE closed_by = 'safety_net'")
    assert by_net >= LONG_STREAMS
    db.close()

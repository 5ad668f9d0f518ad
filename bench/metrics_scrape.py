"""Bench: /metrics rendered at the largest label set a configuration allows (every route label x model x status),
timed, and the longest the event loop then goes without running, with the render on the loop and off it."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.dialects import GEMINI_METHODS, OPENAI_ROUTES  # noqa: E402
from core.metrics import Metrics  # noqa: E402

STATUSES = ("200", "400", "401", "402", "403", "404", "405", "408", "413", "429", "499", "500", "501", "502", "503",
            "504", "529")
OTHER_ROUTES = ("/v1/images/generations", "/v1/images/edits", "/v1/images/{other}", "/v1/videos", "/v1/videos/{id}",
                "/v1/videos/{id}/content", "/v1/videos/{id}/cancel", "/v1/models", "/v1beta/models", "/v1/pricing",
                "/metrics", "/healthz", "/readyz", "/admin", "/console", "/v1/recharge/orders",
                "/v1/recharge/deposits", "/v1/models/{id}", "/v1beta/models/{id}", "/openapi.json", "/v1/balance",
                "/v1/dashboard/billing", "preflight", "other")
SOURCES = ("upstream", "observed", "estimate", "cache")
KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


def relay_routes() -> list[str]:
    gemini = [f"{base}/{{model}}:{m}" for base in ("/v1beta/models", "/v1/models")
              for m in (*GEMINI_METHODS, "unknown")]
    return [*OPENAI_ROUTES, *gemini]


def fill(models: int, providers: int) -> Metrics:
    """Every series the gateway can write for `models` models on `providers` providers."""
    names = [f"model-{i:04d}" for i in range(models)]
    m = Metrics(names)  # the money series: spend, refunded and unbilled per model
    for route in [*relay_routes(), *OTHER_ROUTES]:
        for name in (names if route in relay_routes() or route.startswith("/v1/images") else ["-"]):
            for status in STATUSES:
                m.observe_request(route, name, int(status), 0.2, 0.001, 0.05, status == "499")
    for name in names:
        for kind in KINDS:
            for source in SOURCES:
                m.child(m.tokens, name, kind, source).inc(10)
    for p in range(providers):
        for kind in ("connect", "timeout", "status_429", "status_500", "status_502", "status_503", "closed"):
            m.upstream_error(f"provider-{p}", kind)
        for name in names[p::providers]:
            m.child(m.overrun_tokens, f"provider-{p}", name).inc(1)
    return m


async def loop_stall(render: object, off_loop: bool, rounds: int) -> float:
    """The longest gap between 1 ms ticks of a ticker on the loop while `rounds` scrapes run (seconds)."""
    longest = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    for _ in range(rounds):
        if off_loop:
            await asyncio.to_thread(render)  # type: ignore[arg-type]
        else:
            render()  # type: ignore[operator]
        await asyncio.sleep(0.005)
    stop = True
    await tick
    return longest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", type=int, nargs="*", default=[20, 100])
    p.add_argument("--providers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    print("metrics scrape: models  series  body_bytes  render_ms(min/median)  loop_stall_ms(on loop / off loop)")
    for models in args.models:
        m = fill(models, args.providers)
        body = m.render()
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            m.render()
            times.append(time.perf_counter() - t0)
        on, off = [], []
        for _ in range(3):  # alternating rounds: the machine's drift falls on both alike
            on.append(asyncio.run(loop_stall(m.render, False, 3)))
            off.append(asyncio.run(loop_stall(m.render, True, 3)))
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        print(f"metrics scrape: {models:6d}  {series:6d}  {len(body):10d}  {min(times) * 1000:7.1f}/"
              f"{statistics.median(times) * 1000:.1f}  {statistics.median(on) * 1000:7.1f} / "
              f"{statistics.median(off) * 1000:.1f}  (ratio {statistics.median(on) / statistics.median(off):.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

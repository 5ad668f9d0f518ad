"""Prometheus metrics for /metrics: requests, durations, time to first byte, gateway overhead, tokens, open
streams, upstream errors and overruns, money spent and unbilled, the oldest open hold's age, failed ledger writes.
One registry per app, so tests can run several. Names follow Prometheus conventions (base units,
counters exposed with _total) and pass `promtool check metrics` (tests/test_metrics_lint.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from billing.store import Settled
from core.health import UpstreamHealth

disable_created_metrics()  # no *_created series: Prometheus does not need them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
OTHER_MODEL = "-"  # the money metrics' model label for a hold whose model is no longer configured
UNBILLED_REASONS = ("overrun", "shortfall")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: Iterable[str] = ()) -> None:
        self.health = UpstreamHealth()  # the same failures, tallied per minute for the console (core/health.py)
        self.models = frozenset(models)  # the configured models: the money metrics' model labels, with OTHER_MODEL
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokentoll_requests", "Requests answered, by route, model and HTTP status.",
            ["route", "model", "status"], registry=r)
        self.duration = Histogram(
            "tokentoll_request_duration_seconds", "Time from request to the last byte of the answer.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram(
            "tokentoll_time_to_first_byte_seconds", "Time from request to the first byte of the answer.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram(
            "tokentoll_gateway_overhead_seconds",
            "Time spent in the gateway itself: total time minus time waiting on the upstream.",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter(
            "tokentoll_tokens", "Tokens metered, by model, kind (input, output, cache_read, cache_write, reasoning) and usage source.",
            ["model", "kind", "source"], registry=r)
        self.open_streams = Gauge(
            "tokentoll_open_streams", "Streaming responses currently open.", registry=r)
        self.upstream_errors = Counter(
            "tokentoll_upstream_errors", "Upstream failures, by provider and kind.",
            ["provider", "kind"], registry=r)
        self.client_disconnects = Counter(
            "tokentoll_client_disconnects", "Requests whose client left before the answer was complete.",
            ["route"], registry=r)
        self.oldest_open_hold = Gauge(
            "tokentoll_oldest_open_hold_age_seconds",
            "Age of the oldest open hold, by kind (request: closed by the safety net after billing.hold_ttl; "
            "task: by the task poller after tasks.ttl); 0 when there is none. Read from the database at scrape time.",
            ["kind"], registry=r)
        self.overrun_tokens = Counter(
            "tokentoll_upstream_overrun_tokens", "Tokens an upstream produced (or reported) past what the request's "
            "hold was sized for, by provider and model: they were not charged (a request costs at most its hold). "
            "A provider that keeps adding here ignores the output limit it is sent.", ["provider", "model"],
            registry=r)
        self.spend = Counter(
            "tokentoll_spend_nanousd", "Money taken from wallets by settlements (requests, images, tasks, the "
            "safety net's prompt estimates), in nano-USD, by model ('-': a model no longer configured). What "
            "wallets paid is this less tokentoll_refunded_nanousd_total.", ["model"], registry=r)
        self.refunded = Counter(
            "tokentoll_refunded_nanousd", "Money given back to wallets, in nano-USD, by model: a request that ended "
            "after the safety net had charged its prompt estimate, and cost less.", ["model"], registry=r)
        self.unbilled = Counter(
            "tokentoll_unbilled_nanousd", "Money of work nobody was charged for, in nano-USD, by model and reason: "
            "overrun (a cost above the request's hold: an upstream past its limits), shortfall (a request that "
            "ended after the safety net closed its hold, in a wallet spent meanwhile).", ["model", "reason"],
            registry=r)
        for model in (*sorted(self.models), OTHER_MODEL):  # every series from 0, so increase() sees the first
            self.spend.labels(model)
            self.refunded.labels(model)
            for reason in UNBILLED_REASONS:
                self.unbilled.labels(model, reason)
        self.ledger_write_failures = Counter(
            "tokentoll_ledger_write_failures", "Hold or settle transactions that raised (money may be held "
            "until the safety net settles it).", registry=r)
        self.recharge_lag = Gauge(
            "tokentoll_recharge_scan_lag_blocks", "USDT deposits: the chain's head minus the first block not yet "
            "scanned and final, as the process running the chain's watcher last saw it.", ["chain"], registry=r)
        self.recharge_deposits = Gauge(
            "tokentoll_recharge_deposits", "USDT deposits recorded, by chain and status (seen, credited, dropped, "
            "held). Read from the database at scrape time.", ["chain", "status"], registry=r)
        self.recharge_rpc_errors = Counter(
            "tokentoll_recharge_rpc_errors", "Watcher passes that failed on the chain's RPC (retried, nothing "
            "skipped).", ["chain"], registry=r)
        self.admin_auth_failures = Counter(
            "tokentoll_admin_auth_failures", "Admin API (/admin) requests with a missing or wrong admin token: "
            "answered 401, or 429 once their address is throttled (core/admin.py).", registry=r)

    def child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), memoized: the hot path skips prometheus_client's lock and checks."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def upstream_error(self, provider: str, kind: str) -> None:
        """An upstream failure: counted for Prometheus and in the health tally the console shows."""
        self.child(self.upstream_errors, provider, kind).inc()
        self.health.failure(provider)

    def observe_request(self, route: str, model: str, status: int, total: float, overhead: float,
                        ttfb: float | None, client_gone: bool) -> None:
        """One finished request: its count, duration, the gateway's own share, time to first byte (None:
        nothing was sent) and whether the client left."""
        self.child(self.requests, route, model, str(status)).inc()
        self.child(self.duration, route).observe(total)
        self.child(self.overhead, route).observe(overhead)
        if ttfb is not None:
            self.child(self.ttfb, route).observe(ttfb)
        if client_gone:
            self.child(self.client_disconnects, route).inc()

    def count_settlement(self, settled: Settled) -> None:
        """A settlement that changed the books (the ledger never passes a replay): the money it took from the
        wallet or gave back, and what it could not charge."""
        model = settled.model if settled.model in self.models else OTHER_MODEL
        if settled.taken > 0:
            self.child(self.spend, model).inc(settled.taken)
        elif settled.taken < 0:
            self.child(self.refunded, model).inc(-settled.taken)
        if settled.overrun:
            self.child(self.unbilled, model, "overrun").inc(settled.overrun)
        if settled.unbilled:
            self.child(self.unbilled, model, "shortfall").inc(settled.unbilled)

    def set_oldest_open_hold(self, ages: dict[str, float]) -> None:
        for kind, age in ages.items():
            self.oldest_open_hold.labels(kind).set(age)

    def set_recharge(self, lags: dict[str, int], deposits: list[tuple[str, str, int]]) -> None:
        for chain, lag in lags.items():
            self.recharge_lag.labels(chain).set(lag)
        for chain, status, count in deposits:
            self.recharge_deposits.labels(chain, status).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)

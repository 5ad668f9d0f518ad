"""Configuration: reads config.toml into typed, validated settings.
Every error names the key at fault, so a bad file stops start-up with a message an operator can act on."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.openai.passthrough import CHAT_LIMIT_FIELDS
from billing.pricing import PriceError, TokenPrices, usd_to_units
from core.clientip import Network, parse_networks

CONFIG_ENV = "TOKENTOLL_CONFIG"
FORMATS = ("openai", "anthropic", "gemini")
BUILTINS = ("demo",)


class ConfigError(Exception):
    """A configuration problem; the message starts with the offending key."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds. first_byte: until the upstream's response headers; idle: longest gap between chunks."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0
    total: float = 900.0


@dataclass(frozen=True)
class Provider:
    name: str
    format: str
    base_url: str
    api_key: str
    timeouts: Timeouts
    builtin: str = ""  # "demo": answered in-process, no network
    demo_chunk_delay: float = 0.0  # seconds between demo stream chunks
    limit_field: str = "max_tokens"  # OpenAI format: the Chat Completions field that carries the output limit
    # OpenAI format: the upstream serves POST /v1/responses (passed through as is); false: Responses calls are
    # translated to its Chat Completions. A parsed config always sets it (see default_responses_api).
    responses_api: bool = True


@dataclass(frozen=True)
class Channel:
    """One way to serve a model: a provider and its name for the model. The highest priority is tried
    first, and within one priority the weights share the traffic."""

    provider: Provider
    upstream_model: str
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True)
class Model:
    name: str
    provider: Provider  # the first channel's (the one a model with a single channel has)
    upstream_model: str
    max_output_tokens: int
    prices: TokenPrices  # nano-dollars per 1M tokens, converted exactly from the file's USD
    owned_by: str
    created: int
    image_prices: dict[str, int] = field(default_factory=dict)  # "1024x1024" or "1024x1024/hd" -> per image
    task_price: int | None = None  # per async task
    second_price: int | None = None  # per second of async output (video)
    channels: tuple[Channel, ...] = ()  # every way to serve it, the first being provider + upstream_model
    # The most prompt tokens a request can have (the context window): held for media whose size only the upstream
    # learns (a video by URL, say), and the most any prompt is held for. None: such media are refused.
    max_input_tokens: int | None = None

    @property
    def kind(self) -> str:
        """What the model is priced by, and so which endpoints serve it: "text" (per token: chat, messages,
        generateContent, responses, completions, embeddings, token counts), "image" (/v1/images) or "video"
        (per task or second: /v1/videos)."""
        if self.image_prices:
            return "image"
        if self.task_price is not None or self.second_price is not None:
            return "video"
        return "text"


@dataclass(frozen=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    request_log: str = "-"  # "-" stdout, "" off, else a file path
    upstream_pool_size: int = 256
    workers: int = 1  # processes sharing the listening socket
    shutdown_grace: float = 10.0  # seconds open requests may run on after SIGTERM
    media_fetch_bytes: int = 20 * 1024 * 1024  # largest image or document fetched from a URL for Gemini
    media_fetch_private: bool = False  # let media URLs point at private addresses (tests, trusted networks)
    media_fetch_count: int = 16  # most media URLs fetched for one request
    media_fetch_total_bytes: int = 64 * 1024 * 1024  # most bytes fetched for one request's media, in all
    trusted_proxies: tuple[Network, ...] = ()  # proxies whose X-Forwarded-For / X-Real-IP are believed
    body_timeout: float = 60.0  # seconds a request body may take to arrive, from its headers; then 408 and closed
    idle_timeout: float = 75.0  # seconds a connection may wait for a request's headers (or the next one); then closed
    admin_listen: str = ""  # host:port: /admin is served there alone and is a 404 on the public listener
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (core/cors.py; "*": any); () none


@dataclass(frozen=True)
class Billing:
    enabled: bool = True  # false: no key, no hold, no charge (a trusted network only; logged at start)
    database: str = "data/tokentoll.db"
    synchronous: str = "NORMAL"  # SQLite: NORMAL survives a killed process; FULL also a power cut
    hold_ttl: float = 1800.0  # the safety net closes holds older than this (seconds)
    sweep_interval: float = 30.0
    default_rpm: int = 0  # per key; 0 = no limit
    default_tpm: int = 0
    demo_balance: int = 0  # nano-dollars; > 0: a fresh database gets a demo account and key


@dataclass(frozen=True)
class Routing:
    """Failover between a model's channels (see core/routing.py)."""

    breaker_failures: int = 3  # failures in a row that take a channel out
    breaker_seconds: float = 30.0  # how long it stays out before one request probes it again


# Confirmations a deposit needs by default, by chain id (the figures; others must be configured)
DEFAULT_CONFIRMATIONS = {1: 12, 56: 15, 137: 64, 42161: 64}


@dataclass(frozen=True)
class Chain:
    """A chain whose USDT deposits credit wallets (billing/recharge/)."""

    name: str
    kind: str  # "evm" or "tron" (TRON through its Ethereum-style JSON-RPC)
    rpc_url: str  # may carry a provider key: never logged
    contract: str  # 0x + 40 lower-case hex (a TRON T-address is stored in this form)
    xpub: str  # the account-level extended PUBLIC key the deposit addresses come from
    confirmations: int
    decimals: int = 6
    chain_id: int | None = None
    batch_blocks: int = 2000
    poll_interval: float = 5.0
    start_block: int | None = None


@dataclass(frozen=True)
class Recharge:
    usd_per_usdt: Decimal = Decimal(1)
    fee: Decimal = Decimal(0)  # a fraction kept from each deposit (0.01 = 1%)
    minimum: int = 1_000_000_000  # nano-dollars: smaller deposits wait for an operator
    order_ttl: float = 3600.0  # seconds a recharge order waits for its payment


@dataclass(frozen=True)
class Cache:
    """The gateway's own response cache (see core/response_cache.py)."""

    enabled: bool = True
    ttl: float = 3600.0  # seconds an answer may be served from the cache
    max_bytes: int = 256 * 1024 * 1024  # all entries together; the least recently used go first
    shared: bool = False  # false: each account has its own cache; true: one cache for all accounts


@dataclass(frozen=True)
class Tasks:
    """Async tasks (video generation)."""

    ttl: float = 6 * 3600.0  # a task not completed this long after submission is expired, its hold released
    poll_interval: float = 10.0  # seconds between the background poller's looks at an open task


@dataclass(frozen=True)
class Console:
    """The web console under /console (core/console/)."""

    enabled: bool = True
    signup: bool = True  # false: only an operator creates log-ins (gateway.py users create)
    base_url: str = ""  # the public URL shown in Client Integration; "" = taken from each request
    session_ttl: float = 7 * 86400.0  # seconds a log-in lasts
    login_attempts: int = 5  # failed log-ins per (e-mail address, client address) per login_window...
    login_window: float = 900.0  # ...seconds, and 4x as many per client address across e-mail addresses
    signups_per_hour: int = 10  # sign-ups allowed per client address per hour


@dataclass(frozen=True)
class Settings:
    server: Server
    providers: dict[str, Provider]
    models: dict[str, Model] = field(default_factory=dict)
    billing: Billing = field(default_factory=Billing)
    source: str = ""
    cache: Cache = field(default_factory=Cache)
    tasks: Tasks = field(default_factory=Tasks)
    routing: Routing = field(default_factory=Routing)
    chains: dict[str, Chain] = field(default_factory=dict)
    recharge: Recharge = field(default_factory=Recharge)
    console: Console = field(default_factory=Console)


def config_path(cli_value: str | None) -> Path:
    """--config wins, then $TOKENTOLL_CONFIG, then ./config.toml."""
    return Path(cli_value or os.environ.get(CONFIG_ENV) or "config.toml")


def load(path: Path, environ: dict[str, str] | None = None, provider_keys: bool = True) -> Settings:
    """The settings in `path`. `provider_keys` False (the operator commands, which call no upstream): a provider
    whose api_key_env is not set is read with no key instead of refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = parse(raw, os.environ if environ is None else environ, provider_keys)
    billing = settings.billing
    if not os.path.isabs(billing.database):  # relative to the config file, not to the working directory
        billing = Billing(**{**billing.__dict__, "database": str(path.parent / billing.database)})
    return replace(settings, billing=billing, source=str(path))


def parse(raw: dict[str, Any], environ: dict[str, str] | os._Environ[str], provider_keys: bool = True) -> Settings:
    _only_keys(raw, "", {"server", "providers", "models", "billing", "cache", "tasks", "routing", "chains",
                         "recharge", "console"})
    server = _server(_table(raw, "server", "server"))
    providers_raw = _table(raw, "providers", "providers")
    if not providers_raw:
        raise ConfigError("providers: at least one provider is required")
    providers = {n: _provider(n, _table(providers_raw, n, f"providers.{_q(n)}"), environ, provider_keys)
                 for n in providers_raw}
    models_raw = _table(raw, "models", "models")
    if not models_raw:
        raise ConfigError("models: at least one model is required")
    models = {n: _model(n, _table(models_raw, n, f"models.{_q(n)}"), providers) for n in models_raw}
    billing = _billing(_table(raw, "billing", "billing"))
    longest = max((p.timeouts.total for p in providers.values() if not p.builtin), default=0)
    if billing.hold_ttl <= longest:
        raise ConfigError(f"billing.hold_ttl: must be longer than the longest request allowed "
                          f"(a provider's total timeout is {longest:g}s)")
    for m in models.values():  # failover: a request may wait on each of its channels in turn
        worst = sum(c.provider.timeouts.total for c in m.channels if not c.provider.builtin)
        if billing.hold_ttl <= worst:
            raise ConfigError(f"billing.hold_ttl: must be longer than the longest request allowed (the model "
                              f"{m.name!r} may try channels whose total timeouts add up to {worst:g}s)")
    return Settings(server, providers, models, billing, cache=_cache(_table(raw, "cache", "cache")),
                    tasks=_tasks(_table(raw, "tasks", "tasks")), routing=_routing(_table(raw, "routing", "routing")),
                    chains={n: _chain(n, _table(_table(raw, "chains", "chains"), n, f"chains.{_q(n)}"), environ)
                            for n in _table(raw, "chains", "chains")},
                    recharge=_recharge(_table(raw, "recharge", "recharge")),
                    console=_console(_table(raw, "console", "console")))


def _console(t: dict[str, Any]) -> Console:
    at = "console"
    _only_keys(t, at, {"enabled", "signup", "base_url", "session_ttl", "login_attempts", "login_window",
                       "signups_per_hour"})
    d = Console()
    base_url = _str(t, "base_url", at, d.base_url, allow_empty=True).rstrip("/")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.base_url: must be an http(s) URL such as \"https://llm.example.com\", or empty")
    return Console(enabled=_bool(t, "enabled", at, d.enabled), signup=_bool(t, "signup", at, d.signup),
                   base_url=base_url, session_ttl=_seconds(t, "session_ttl", at, d.session_ttl, positive=True),
                   login_attempts=_int(t, "login_attempts", at, d.login_attempts, lo=1, hi=1000),
                   login_window=_seconds(t, "login_window", at, d.login_window, positive=True),
                   signups_per_hour=_int(t, "signups_per_hour", at, d.signups_per_hour, lo=1, hi=100_000))


def _chain(name: str, t: dict[str, Any], environ: Any) -> Chain:
    from billing.recharge import addresses  # bip-utils is only loaded when chains are configured

    at = f"chains.{_q(name)}"
    _only_keys(t, at, {"kind", "rpc_url", "rpc_url_env", "chain_id", "contract", "decimals", "confirmations", "xpub",
                       "batch_blocks", "poll_interval", "start_block"})
    kind = _str(t, "kind", at, "evm")
    if kind not in ("evm", "tron"):
        raise ConfigError(f"{at}.kind: must be \"evm\" or \"tron\"")
    if "rpc_url_env" in t:
        env_name = _str(t, "rpc_url_env", at, None)
        url = environ.get(env_name, "")
        if not url:
            raise ConfigError(f"{at}.rpc_url_env: the environment variable {env_name} is not set")
    else:
        url = _str(t, "rpc_url", at, None)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.rpc_url: must be an http(s) URL")
    try:
        raw_contract = _str(t, "contract", at, None)
        contract = addresses.tron_to_evm(raw_contract) if kind == "tron" else addresses.evm_key(raw_contract)
    except addresses.AddressError as exc:
        raise ConfigError(f"{at}.contract: {exc}") from None
    xpub = _str(t, "xpub", at, None)
    try:
        addresses.check_xpub(xpub, "tron" if kind == "tron" else "evm")
    except addresses.AddressError as exc:
        raise ConfigError(f"{at}.xpub: {exc}") from None
    chain_id = _int(t, "chain_id", at, 0, lo=0) or None
    default_confirmations = DEFAULT_CONFIRMATIONS.get(chain_id or -1, 19 if kind == "tron" else None)
    if "confirmations" not in t and default_confirmations is None:
        raise ConfigError(f"{at}.confirmations: required for this chain (defaults exist for Ethereum 12, BSC 15, "
                          f"Polygon and Arbitrum 64, TRON 19)")
    return Chain(
        name=name, kind=kind, rpc_url=url, contract=contract, xpub=xpub,
        confirmations=_int(t, "confirmations", at, default_confirmations or 1, lo=1, hi=10_000),
        decimals=_int(t, "decimals", at, 6, lo=0, hi=36), chain_id=chain_id,
        batch_blocks=_int(t, "batch_blocks", at, 2000, lo=1, hi=1_000_000),
        poll_interval=_seconds(t, "poll_interval", at, 5.0, positive=True),
        start_block=_int(t, "start_block", at, 0, lo=0) if "start_block" in t else None,
    )


def _recharge(t: dict[str, Any]) -> Recharge:
    at = "recharge"
    _only_keys(t, at, {"usd_per_usdt", "fee", "minimum", "order_ttl"})
    d = Recharge()
    rate = _number(t, "usd_per_usdt", at, d.usd_per_usdt)
    fee = _number(t, "fee", at, d.fee)
    if rate <= 0:
        raise ConfigError(f"{at}.usd_per_usdt: must be positive")
    if not 0 <= fee < 1:
        raise ConfigError(f"{at}.fee: a fraction from 0 to below 1 (0.01 = 1%)")
    minimum = _money(t, "minimum", at) if "minimum" in t else d.minimum
    return Recharge(rate, fee, minimum, _seconds(t, "order_ttl", at, d.order_ttl, positive=True))


def _routing(t: dict[str, Any]) -> Routing:
    at = "routing"
    _only_keys(t, at, {"breaker_failures", "breaker_seconds"})
    d = Routing()
    return Routing(breaker_failures=_int(t, "breaker_failures", at, d.breaker_failures, lo=1, hi=1000),
                   breaker_seconds=_seconds(t, "breaker_seconds", at, d.breaker_seconds, positive=True))


def _cache(t: dict[str, Any]) -> Cache:
    at = "cache"
    _only_keys(t, at, {"enabled", "ttl", "max_bytes", "shared"})
    d = Cache()
    return Cache(enabled=_bool(t, "enabled", at, d.enabled), ttl=_seconds(t, "ttl", at, d.ttl, positive=True),
                 max_bytes=_int(t, "max_bytes", at, d.max_bytes, lo=1024), shared=_bool(t, "shared", at, d.shared))


def _tasks(t: dict[str, Any]) -> Tasks:
    at = "tasks"
    _only_keys(t, at, {"ttl", "poll_interval"})
    d = Tasks()
    return Tasks(ttl=_seconds(t, "ttl", at, d.ttl, positive=True),
                 poll_interval=_seconds(t, "poll_interval", at, d.poll_interval, positive=True))


def _billing(t: dict[str, Any]) -> Billing:
    at = "billing"
    _only_keys(t, at, {"enabled", "database", "synchronous", "hold_ttl", "sweep_interval", "default_rpm", "default_tpm",
                       "demo_balance"})
    d = Billing()
    sync = _str(t, "synchronous", at, d.synchronous).upper()
    if sync not in ("NORMAL", "FULL"):
        raise ConfigError(f"{at}.synchronous: must be NORMAL or FULL")
    demo = _number(t, "demo_balance", at, Decimal(0))
    try:
        demo_units = usd_to_units(demo)
    except PriceError:
        raise ConfigError(f"{at}.demo_balance: more than 9 decimals") from None
    values = {key: _seconds(t, key, at, getattr(d, key), positive=True) for key in ("hold_ttl", "sweep_interval")}
    return Billing(
        enabled=_bool(t, "enabled", at, d.enabled),
        database=_str(t, "database", at, d.database),
        synchronous=sync,
        default_rpm=_int(t, "default_rpm", at, d.default_rpm),
        default_tpm=_int(t, "default_tpm", at, d.default_tpm),
        demo_balance=demo_units,
        **values,
    )


def _server(t: dict[str, Any]) -> Server:
    _only_keys(t, "server", {"host", "port", "max_body_bytes", "request_log", "upstream_pool_size", "workers",
                                 "shutdown_grace", "media_fetch_bytes", "media_fetch_private", "media_fetch_count",
                                 "media_fetch_total_bytes", "trusted_proxies", "body_timeout", "idle_timeout",
                                 "admin_listen", "cors_origins"})
    d = Server()
    return Server(
        host=_str(t, "host", "server", d.host),
        port=_int(t, "port", "server", d.port, lo=0, hi=65535),
        max_body_bytes=_int(t, "max_body_bytes", "server", d.max_body_bytes, lo=1024),
        request_log=_log_target(_str(t, "request_log", "server", d.request_log, allow_empty=True)),
        upstream_pool_size=_int(t, "upstream_pool_size", "server", d.upstream_pool_size, lo=1),
        workers=_int(t, "workers", "server", d.workers, lo=1, hi=64),
        shutdown_grace=_seconds(t, "shutdown_grace", "server", d.shutdown_grace),
        media_fetch_bytes=_int(t, "media_fetch_bytes", "server", d.media_fetch_bytes, lo=1024),
        media_fetch_private=_bool(t, "media_fetch_private", "server", d.media_fetch_private),
        media_fetch_count=_int(t, "media_fetch_count", "server", d.media_fetch_count, lo=0, hi=1000),
        media_fetch_total_bytes=_int(t, "media_fetch_total_bytes", "server", d.media_fetch_total_bytes, lo=1024),
        trusted_proxies=_networks(t, "trusted_proxies", "server"),
        body_timeout=_seconds(t, "body_timeout", "server", d.body_timeout, positive=True),
        idle_timeout=_seconds(t, "idle_timeout", "server", d.idle_timeout, positive=True),
        admin_listen=_listen_address(t, "admin_listen", "server"),
        cors_origins=_origins(t, "cors_origins", "server"),
    )


ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def _origins(t: dict[str, Any], key: str, at: str) -> tuple[str, ...]:
    """Browser origins as a browser sends them in Origin (scheme://host[:port], no path or trailing slash), or "*"."""
    v = t.get(key, [])
    if not isinstance(v, list) or not all(isinstance(e, str) for e in v):
        raise ConfigError(f"{at}.{key}: must be a list of origins, like [\"https://chat.example.com\"], or [\"*\"]")
    for origin in v:
        if origin != "*" and not ORIGIN.fullmatch(origin):
            raise ConfigError(f"{at}.{key}: {origin[:100]!r} is not an origin: write scheme://host[:port], like "
                              f"\"https://chat.example.com\", with no path and no trailing slash (or \"*\" for any)")
    return tuple(o.lower() for o in v)


def _listen_address(t: dict[str, Any], key: str, at: str) -> str:
    """"" (not set) or host:port, with the host an IP address or a name and [brackets] around IPv6."""
    v = _str(t, key, at, "", allow_empty=True)
    if not v:
        return ""
    host, colon, port = v.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{at}.{key}: {v!r} is not host:port, like \"127.0.0.1:9090\"")
    return v


def _networks(t: dict[str, Any], key: str, at: str) -> tuple[Network, ...]:
    v = t.get(key, [])
    if not isinstance(v, list) or not all(isinstance(e, str) for e in v):
        raise ConfigError(f"{at}.{key}: must be a list of IP addresses or CIDRs, like [\"127.0.0.1\", \"10.0.0.0/8\"]")
    try:
        return parse_networks(v)
    except ValueError as exc:
        raise ConfigError(f"{at}.{key}: {exc}") from None


def _seconds(t: dict[str, Any], key: str, at: str, default: float, positive: bool = False) -> float:
    v = _number(t, key, at, Decimal(str(default)))
    if positive and v <= 0:
        raise ConfigError(f"{at}.{key}: must be a positive number of seconds")
    if v < 0:
        raise ConfigError(f"{at}.{key}: must not be negative")
    return float(v)


def _log_target(target: str) -> str:
    if target in ("", "-"):
        return target
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or \
            (os.path.exists(target) and not os.access(target, os.W_OK)):
        raise ConfigError(f"server.request_log: cannot write {target!r} (is the folder there and writable?)")
    return target


def _provider(name: str, t: dict[str, Any], environ: Any, need_key: bool = True) -> Provider:
    at = f"providers.{_q(name)}"
    _only_keys(t, at, {"format", "base_url", "api_key_env", "timeouts", "builtin", "demo_chunk_delay", "limit_field",
                       "responses_api"})
    fmt = _str(t, "format", at, "openai")
    if fmt not in FORMATS:
        raise ConfigError(f"{at}.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    responses_api = _responses_api(t, at, fmt)
    limit_field = _str(t, "limit_field", at, "auto")
    if "limit_field" in t and fmt != "openai":
        raise ConfigError(f"{at}.limit_field: only OpenAI-format providers choose it ({fmt} has one limit field)")
    if limit_field not in ("auto", *CHAT_LIMIT_FIELDS):
        raise ConfigError(f"{at}.limit_field: must be \"auto\", \"max_tokens\" or \"max_completion_tokens\"")
    timeouts = _timeouts(_table(t, "timeouts", f"{at}.timeouts"), f"{at}.timeouts")
    builtin = _str(t, "builtin", at, "", allow_empty=True)
    delay = _seconds(t, "demo_chunk_delay", at, 0.0)
    if builtin:
        if builtin not in BUILTINS:
            raise ConfigError(f"{at}.builtin: {builtin!r} is not one of {', '.join(BUILTINS)}")
        if fmt != "openai":
            raise ConfigError(f"{at}.format: the builtin {builtin!r} provider speaks 'openai', not {fmt!r}")
        for key in ("base_url", "api_key_env"):
            if key in t:
                raise ConfigError(f"{at}.{key}: a builtin provider has no {key}; remove it or remove 'builtin'")
        return Provider(name, fmt, "", "", timeouts, builtin, delay, default_limit_field("") if
                        limit_field == "auto" else limit_field, default_responses_api("") if
                        responses_api is None else responses_api)
    base_url = _str(t, "base_url", at, None).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.base_url: must start with http:// or https://, got {base_url!r}")
    key_env = _str(t, "api_key_env", at, "", allow_empty=True)
    api_key = ""
    if key_env:
        api_key = environ.get(key_env, "")
        if not api_key and need_key:
            raise ConfigError(f"{at}.api_key_env: environment variable {key_env} is not set or empty")
    if limit_field == "auto":
        limit_field = default_limit_field(base_url)
    return Provider(name, fmt, base_url, api_key, timeouts, limit_field=limit_field,
                    responses_api=default_responses_api(base_url) if responses_api is None else responses_api)


def _responses_api(t: dict[str, Any], at: str, fmt: str) -> bool | None:
    """responses_api: true, false, or "auto" (the default, None here: decided by the host); OpenAI format only."""
    value = t.get("responses_api", "auto")
    if "responses_api" in t and fmt != "openai":
        raise ConfigError(f"{at}.responses_api: only OpenAI-format providers choose it (a {fmt} upstream has no "
                          "Responses API: Responses calls to its models are always translated)")
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"{at}.responses_api: must be \"auto\", true or false")
    return value


# Hosts whose Chat Completions need max_completion_tokens: OpenAI's reasoning models refuse max_tokens (so does
# Azure OpenAI), and Groq documents max_tokens as deprecated. Every self-hosted engine reads max_tokens (llama.cpp's
# Python server and Ollama read nothing else), as do DeepSeek, OpenRouter and LM Studio.
COMPLETION_TOKENS_HOSTS = ("api.openai.com", "api.groq.com")
COMPLETION_TOKENS_DOMAINS = (".openai.azure.com",)


def default_limit_field(base_url: str) -> str:
    """limit_field = "auto": the field the provider at this base URL obeys (docs/billing.md "What a request can
    cost")."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in COMPLETION_TOKENS_HOSTS or host.endswith(COMPLETION_TOKENS_DOMAINS):
        return "max_completion_tokens"
    return "max_tokens"


# Hosts that serve POST /v1/responses in full (stored responses, built-in tools): OpenAI and Azure OpenAI (its v1
# API, base URL .../openai/v1). Most OpenAI-compatible servers serve only Chat Completions (llama.cpp, older vLLM,
# DeepSeek, ...), and a wrong "true" makes every Responses call a 404, while a wrong "false" only loses what cannot
# be translated.
RESPONSES_API_HOSTS = ("api.openai.com",)
RESPONSES_API_DOMAINS = (".openai.azure.com",)


def default_responses_api(base_url: str) -> bool:
    """responses_api = "auto": whether the provider at this base URL is known to serve /v1/responses
    (docs/formats.md "The Responses API"); the builtin demo provider (no base URL) serves it."""
    if not base_url:
        return True
    url = urlsplit(base_url)
    host = (url.hostname or "").lower()
    if host.endswith(RESPONSES_API_DOMAINS):  # Azure's v1 API (/openai/v1); not a deployment's own URL
        return url.path.rstrip("/").endswith("/openai/v1")
    return host in RESPONSES_API_HOSTS


def _timeouts(t: dict[str, Any], at: str) -> Timeouts:
    _only_keys(t, at, {"connect", "first_byte", "idle", "total"})
    d = Timeouts()
    return Timeouts(**{key: _seconds(t, key, at, getattr(d, key), positive=True)
                       for key in ("connect", "first_byte", "idle", "total")})


def _model(name: str, t: dict[str, Any], providers: dict[str, Provider]) -> Model:
    at = f"models.{_q(name)}"
    if not name or name != name.strip():
        raise ConfigError(f"{at}: a model name must be non-empty and have no surrounding spaces")
    _only_keys(t, at, {"provider", "upstream_model", "channels", "max_output_tokens", "max_input_tokens", "price",
                       "owned_by", "created"})
    channels = _channels(t, at, name, providers)
    pname = channels[0].provider.name
    price_t = _table(t, "price", f"{at}.price")
    _only_keys(price_t, f"{at}.price", {"input", "output", "cache_read", "cache_write", "image", "task", "second"})
    per_unit = [key for key in ("image", "task", "second") if key in price_t]
    if per_unit:  # an image or video model: its own endpoint only, so a token price would never be charged
        for key in ("input", "output", "cache_read", "cache_write"):
            if key in price_t and _money(price_t, key, f"{at}.price"):
                raise ConfigError(f"{at}.price.{key}: a model priced per {per_unit[0]} is served only by "
                                  f"{'/v1/images' if per_unit[0] == 'image' else '/v1/videos'}, never by the text "
                                  "endpoints, so a token price would never be charged: remove it (a model that "
                                  "also chats needs an entry of its own)")
    for key in ("input", "output"):  # a forgotten price must not make a model free
        if key not in price_t and not per_unit:
            raise ConfigError(f"{at}.price.{key}: required (USD per 1M tokens; write \"0\" for a free model)")
    if "image" in price_t and len(per_unit) > 1:
        raise ConfigError(f"{at}.price: a model is priced per image or per task and second, not both")
    prices = {key: _money(price_t, key, f"{at}.price") if key in price_t else 0 for key in ("input", "output")}
    for key in ("cache_read", "cache_write"):  # unset: cached input costs what fresh input costs
        prices[key] = _money(price_t, key, f"{at}.price") if key in price_t else prices["input"]
    images_t = _table(price_t, "image", f"{at}.price.image")
    images = {}
    for size in images_t:
        if not _IMAGE_KEY.fullmatch(size):
            raise ConfigError(f"{at}.price.image.{size}: keys are SIZE or SIZE/QUALITY, like \"1024x1024\" or "
                              f"\"1024x1024/hd\"")
        images[size] = _money(images_t, size, f"{at}.price.image")
    return Model(
        name=name,
        provider=channels[0].provider,
        upstream_model=channels[0].upstream_model,
        channels=channels,
        max_output_tokens=_int(t, "max_output_tokens", at, 4096, lo=1),
        max_input_tokens=_int(t, "max_input_tokens", at, 1, lo=1, hi=10**9) if "max_input_tokens" in t else None,
        prices=TokenPrices(**prices),
        image_prices=images,
        task_price=_money(price_t, "task", f"{at}.price") if "task" in price_t else None,
        second_price=_money(price_t, "second", f"{at}.price") if "second" in price_t else None,
        owned_by=_str(t, "owned_by", at, pname),
        created=_int(t, "created", at, 1_700_000_000, lo=0),
    )


def _channels(t: dict[str, Any], at: str, name: str, providers: dict[str, Provider]) -> tuple[Channel, ...]:
    """provider (+ upstream_model) for one channel, or `channels = [{ provider, upstream_model, priority,
    weight }, ...]` for several; the first is the one of the highest priority listed first."""
    def provider_of(value: Any, where: str) -> Provider:
        if value not in providers:
            raise ConfigError(f"{where}: unknown provider {value!r} (defined: {', '.join(sorted(providers))})")
        return providers[value]

    if "channels" not in t:
        return (Channel(provider_of(_str(t, "provider", at, None), f"{at}.provider"),
                        _str(t, "upstream_model", at, name)),)
    if "provider" in t or "upstream_model" in t:
        raise ConfigError(f"{at}.channels: give either provider/upstream_model or channels, not both")
    raw = t["channels"]
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise ConfigError(f"{at}.channels: must be a non-empty array of tables like "
                          "{ provider = \"a\", upstream_model = \"m\", priority = 1, weight = 1 }")
    out = []
    for i, c in enumerate(raw):
        where = f"{at}.channels[{i}]"
        _only_keys(c, where, {"provider", "upstream_model", "priority", "weight"})
        out.append(Channel(provider_of(_str(c, "provider", where, None), f"{where}.provider"),
                           _str(c, "upstream_model", where, name), _int(c, "priority", where, 0, lo=-1000, hi=1000),
                           _int(c, "weight", where, 1, lo=1, hi=1_000_000)))
    if len({(c.provider.name, c.upstream_model) for c in out}) != len(out):
        raise ConfigError(f"{at}.channels: a provider and upstream_model pair is listed twice")
    return tuple(sorted(out, key=lambda c: -c.priority))  # stable: the file's order within a priority


# -- small typed readers: each names the key on failure ------------------------------------

_IMAGE_KEY = re.compile(r"(\d+x\d+|auto)(/[a-z]+)?")


def _money(t: dict[str, Any], key: str, at: str) -> int:
    """A non-negative USD amount as integer nano-dollars, exactly."""
    v = _number(t, key, at, Decimal(0))
    if v < 0:
        raise ConfigError(f"{at}.{key}: must not be negative")
    try:
        return usd_to_units(v)
    except PriceError:
        raise ConfigError(f"{at}.{key}: {v} has more than 9 decimals (the money unit is 1e-9 USD)") from None


def _q(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else f'"{name}"'


def _only_keys(t: dict[str, Any], at: str, allowed: set[str]) -> None:
    for key in t:
        if key not in allowed:
            where = f"{at}.{key}" if at else key
            raise ConfigError(f"{where}: unknown key (allowed here: {', '.join(sorted(allowed))})")


def _table(t: dict[str, Any], key: str, at: str) -> dict[str, Any]:
    v = t.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{at}: must be a table")
    return v


def _str(t: dict[str, Any], key: str, at: str, default: str | None, allow_empty: bool = False) -> str:
    if key not in t:
        if default is None:
            raise ConfigError(f"{at}.{key}: required")
        return default
    v = t[key]
    if not isinstance(v, str) or (not v and not allow_empty):
        raise ConfigError(f"{at}.{key}: must be a non-empty string")
    return v


def _bool(t: dict[str, Any], key: str, at: str, default: bool) -> bool:
    v = t.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{at}.{key}: must be true or false")
    return v


def _int(t: dict[str, Any], key: str, at: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{at}.{key}: must be an integer")
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{at}.{key}: must be between {lo} and {hi if hi is not None else 'any'}")
    return v


def _number(t: dict[str, Any], key: str, at: str, default: Decimal) -> Decimal:
    v = t.get(key, default)
    number: Decimal | None = None
    if isinstance(v, bool):
        number = None
    elif isinstance(v, (int, Decimal)):
        number = Decimal(v)
    elif isinstance(v, str):
        try:
            number = Decimal(v)
        except ArithmeticError:
            number = None
    if number is None or not number.is_finite():
        raise ConfigError(f"{at}.{key}: must be a finite number")
    return number

"""The chain reader for USDT deposits: Transfer logs of one token to the deposit addresses, block numbers and
hashes, over Ethereum JSON-RPC (also TRON's /jsonrpc), retried with backoff; no database, no crediting here."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import itertools
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from billing.recharge.addresses import AddressError, evm_key

log = logging.getLogger("tokentoll.recharge")

# keccak256("Transfer(address,address,uint256)"), the ERC-20 / TRC-20 Transfer event (tests check the hash)
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
MAX_TOPICS_PER_CALL = 200  # recipients OR-ed in one eth_getLogs (Infura: 5,000 parameters; TRON: 1,000 per slot)
TRON_MAX_SPAN = 5000  # java-tron's default jsonrpc.maxBlockRange: wider eth_getLogs ranges are refused
_HEX = frozenset("0123456789abcdef")
T = TypeVar("T")

# How nodes and providers say "this eth_getLogs asks for too much; ask for a narrower block range". Matched in the
# error's message and data, lower-cased. Deliberately not "block range extends beyond current head block" (geth):
# that node is behind, and narrowing would not help.
RANGE_TOO_WIDE = re.compile("|".join([
    r"query returned more than \d+ results",  # geth, Infura (-32005), TRON (-32005), Polygon zkEVM
    r"log response size exceeded",  # Alchemy
    r"up to a [\d,.]+ block range",  # Alchemy free tier, Aurora
    r"exceed(s)? max(imum)? block range",  # BSC nodes run with --rangelimit, PublicNode; TRON (-32602)
    r"query exceeds max (block range|results)",  # Hyperliquid, LlamaRPC, Ankr
    r"block range (is )?too (large|wide|high)",  # Base, Optimism, Ankr, Moonbeam/Frontier
    r"range is too large",  # "eth_getLogs range is too large, max is 1k blocks"
    r"range \d+ exceeds limit of \d+",  # Infura's block-range limit (-32602)
    r"(is )?limited to (a )?[\d,.]+ (block )?range",  # QuickNode, 1RPC, Blast, BlockPI
    r"limited to [\d,.]+ blocks?",
    r"ranges over [\d,.]+ blocks",  # QuickNode
    r"block range limit exceeded",  # Chainstack
    r"bigger than range limit",  # Tenderly (in the error's data)
    r"requested too many blocks",  # Avalanche
    r"maximum allowed number of requested blocks",  # thirdweb
    r"logs matched by query exceeds limit",  # Arbitrum
    r"response size should not greater than",  # 1RPC
    r"backend response too large",  # Optimism
    r"please limit the query to at most",  # Coinbase (Base) node
]))
RATE_LIMITED = re.compile(r"rate limit|too many requests|request rate|exceeds the frequency limit|allowed_rps"
                          r"|daily request count|compute units|capacity exceeded|throughput")


class RpcError(Exception):
    """A call that failed for good (after the retries). `kind`: rate_limited, unavailable, timeout, bad_response
    or rpc_error. The message names the chain, never the URL (it may carry an API key)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after = retry_after  # a rate limit's own wait, when it exceeded what we wait in place


@dataclass(frozen=True, slots=True)
class Transfer:
    """One Transfer log: keyed by (chain, tx_hash, log_index); hex fields 0x + lower case."""

    chain: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    contract: str
    sender: str
    recipient: str
    amount_raw: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.chain, self.tx_hash, self.log_index


# -- pure helpers ---------------------------------------------------------------------------------------------

def address_topic(address: str) -> str:
    """An address as an indexed-event topic: 0x, 24 zero nibbles, the 40 hex digits (lower case)."""
    return "0x" + "0" * 24 + evm_key(address)[2:]


def topic_address(topic: str) -> str:
    """The address inside an indexed-address topic (0x + 40 lower-case hex); AddressError if it holds none."""
    t = _hex(topic, 32)
    if t is None or t[2:26] != "0" * 24:
        raise AddressError(f"not an address topic: {str(topic)[:70]!r}")
    return "0x" + t[26:]


def parse_transfer_log(chain: str, entry: Any) -> Transfer | None:
    """A JSON-RPC log object as a Transfer, or None: not an ERC-20 Transfer (another event, an ERC-721 Transfer
    with 4 topics, data not one 32-byte word), a `removed: true` log (a reorg took it back), or an odd shape."""
    try:
        if not isinstance(entry, dict) or entry.get("removed") not in (None, False):
            return None
        topics = entry.get("topics")
        if not isinstance(topics, list) or len(topics) != 3 or _hex(topics[0], 32) != TRANSFER_TOPIC:
            return None
        data, tx_hash = _hex(entry.get("data"), 32), _hex(entry.get("transactionHash"), 32)
        block_hash, contract = _hex(entry.get("blockHash"), 32), _contract(entry.get("address"))
        log_index, block_number = _quantity(entry.get("logIndex")), _quantity(entry.get("blockNumber"))
        if data is None or tx_hash is None or block_hash is None or contract is None or log_index is None \
                or block_number is None:
            return None
        return Transfer(chain, tx_hash, log_index, block_number, block_hash, contract,
                        topic_address(topics[1]), topic_address(topics[2]), int(data, 16))
    except (AddressError, TypeError, ValueError):
        return None


def tron_jsonrpc_url(api_url: str) -> str:
    """A TronGrid-compatible API URL (https://api.trongrid.io) as its Ethereum-style JSON-RPC endpoint."""
    base = api_url.rstrip("/")
    return base if base.endswith("/jsonrpc") else base + "/jsonrpc"


def _hex(value: Any, size: int) -> str | None:
    """Exactly `size` bytes of hex (0x optional, as some TRON versions send), as 0x + lower case; else None."""
    if not isinstance(value, str):
        return None
    h = value.lower().removeprefix("0x")
    return "0x" + h if len(h) == 2 * size and _HEX.issuperset(h) else None


def _quantity(value: Any) -> int | None:
    """A JSON-RPC QUANTITY ("0x1a"); None for anything else, negative or empty included."""
    if not isinstance(value, str) or not value.lower().startswith("0x") or len(value) < 3:
        return None
    digits = value[2:].lower()
    return int(digits, 16) if _HEX.issuperset(digits) else None


def _contract(value: Any) -> str | None:
    """A log's emitting contract; TRON may write its 21-byte form (41 + 20 bytes)."""
    if isinstance(value, str):
        h = value.lower().removeprefix("0x")
        if len(h) == 42 and h.startswith("41"):
            value = "0x" + h[2:]
    return _hex(value, 20)


def _block_hash(result: Any) -> str | None:
    if result is None:
        return None
    h = _hex(result.get("hash") if isinstance(result, dict) else None, 32)
    if h is None:
        raise _Failure("bad_response", "eth_getBlockByNumber answered a block without a 32-byte hash")
    return h


def _number(result: Any) -> int:
    n = _quantity(result)
    if n is None:
        raise _Failure("bad_response", f"expected a hex quantity, got {str(result)[:40]!r}")
    return n


def _logs(result: Any) -> list[Any]:
    if not isinstance(result, list):
        raise _Failure("bad_response", "eth_getLogs answered something other than a list")
    return result


# -- the client ---------------------------------------------------------------------------------------------------

class _Failure(Exception):
    """One attempt that failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, kind: str, message: str, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.retryable, self.retry_after = kind, message, retryable, retry_after


class _RangeTooWide(Exception):
    """The node refused an eth_getLogs range as too wide or too full: ask again for narrower ranges."""


class EvmClient:
    """Ethereum JSON-RPC reads for the deposit watcher: one chain, one URL, over the app's aiohttp session.

    Every call is retried on rate limits (429, Retry-After honoured), 5xx, timeouts, dropped connections,
    malformed answers and JSON-RPC errors, with exponential backoff and jitter, up to `max_attempts`; then it
    raises RpcError. `chain` names the chain in logs and errors; the URL never appears in either.

    TRON: give the /jsonrpc URL (tron_jsonrpc_url), addresses in their 0x hex form (addresses.tron_to_evm) and
    max_span=TRON_MAX_SPAN; a TronGrid API key goes in `headers` ({"TRON-PRO-API-KEY": key})."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float = 10.0, max_attempts: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, *, chain: str = "evm",
                 headers: Mapping[str, str] | None = None, max_span: int | None = None,
                 max_topics: int = MAX_TOPICS_PER_CALL) -> None:
        if max_attempts < 1 or timeout <= 0 or backoff_base < 0 or backoff_max < backoff_base or max_topics < 1:
            raise ValueError("max_attempts >= 1, timeout > 0 and 0 <= backoff_base <= backoff_max")
        self.session = session
        self._url = url
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.chain = chain
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        # The widest eth_getLogs range asked in one call; narrowed for good when a node refuses a range as too wide.
        self.max_span = max_span
        self.max_topics = max_topics
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"EvmClient(chain={self.chain!r})"  # never the URL

    async def chain_id(self) -> int:
        return await self._call("eth_chainId", [], _number)

    async def block_number(self) -> int:
        """The node's head (TRON: its latest block, not yet solidified)."""
        return await self._call("eth_blockNumber", [], _number)

    async def block_hash(self, number: int) -> str | None:
        """The hash of the node's block at `number` (0x + 64 lower-case hex), or None when it has no such block.
        After a reorg the same height gives another hash: what the watcher compares before crediting."""
        if number < 0:
            raise ValueError("a block number is never negative")
        return await self._call("eth_getBlockByNumber", [hex(number), False], _block_hash)

    async def transfer_logs(self, contract: str, recipients: list[str], from_block: int,
                            to_block: int) -> list[Transfer]:
        """Transfers of `contract` to any of `recipients` in blocks from_block..to_block (both included), sorted by
        (block, log index), each once. Recipients go max_topics to a call; a range a node refuses as too wide or
        too full is halved and both halves asked, down to single blocks: no block is skipped. Logs that do not
        match the request (a node that ignored part of the filter) are dropped here.

        Ask only up to a height the node has reached: some nodes (TRON's, load-balanced providers' lagging
        backends) answer a range past their head with the logs they have, without an error."""
        token = evm_key(contract)
        wanted = sorted({evm_key(r) for r in recipients})
        if from_block < 0 or to_block < from_block:
            raise ValueError(f"not a block range: {from_block}..{to_block}")
        found: dict[tuple[str, int], Transfer] = {}
        for i in range(0, len(wanted), self.max_topics):
            chunk = wanted[i:i + self.max_topics]
            asked = set(chunk)
            topics: list[Any] = [TRANSFER_TOPIC, None, [address_topic(a) for a in chunk]]
            for start, end in self._spans(from_block, to_block):
                for entry in await self._logs_halving(token, topics, start, end):
                    transfer = parse_transfer_log(self.chain, entry)
                    if transfer is None:
                        if isinstance(entry, dict) and entry.get("removed") is not True:
                            log.warning("chain %s: skipped an eth_getLogs entry that is not a Transfer log",
                                        self.chain)
                        continue
                    if transfer.contract == token and transfer.recipient in asked and \
                            start <= transfer.block_number <= end:
                        found[(transfer.tx_hash, transfer.log_index)] = transfer
        return sorted(found.values(), key=lambda t: (t.block_number, t.log_index, t.tx_hash))

    def _spans(self, first: int, last: int) -> list[tuple[int, int]]:
        width = self.max_span or last - first + 1
        return [(s, min(s + width - 1, last)) for s in range(first, last + 1, width)]

    async def _logs_halving(self, contract: str, topics: list[Any], start: int, end: int) -> list[Any]:
        params = [{"address": contract, "topics": topics, "fromBlock": hex(start), "toBlock": hex(end)}]
        try:
            return await self._call("eth_getLogs", params, _logs)
        except _RangeTooWide as refusal:
            if start == end:
                raise RpcError("rpc_error", f"chain {self.chain}: eth_getLogs refused even for block {start} "
                                            f"alone: {refusal}") from None
        mid = (start + end) // 2
        half = mid - start + 1
        if self.max_span is None or half < self.max_span:
            self.max_span = half  # later scans start at a width this node accepts
            log.info("chain %s: eth_getLogs range %d..%d refused as too wide; now at most %d blocks a call",
                     self.chain, start, end, half)
        return (await self._logs_halving(contract, topics, start, mid)
                + await self._logs_halving(contract, topics, mid + 1, end))

    async def _call(self, method: str, params: list[Any], parse: Callable[[Any], T]) -> T:
        """One JSON-RPC call, its answer through `parse` (which raises _Failure for a malformed one), retried."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return parse(await self._post(method, params))
            except _Failure as failure:
                message = f"chain {self.chain}: {method}: {failure.message}"
                if not failure.retryable or attempt == self.max_attempts:
                    tries = f" (after {attempt} attempts)" if failure.retryable else ""
                    raise RpcError(failure.kind, message + tries, failure.retry_after) from None
                delay = self._backoff(attempt)
                if failure.retry_after is not None:
                    if failure.retry_after > self.backoff_max:
                        raise RpcError(failure.kind, f"{message} (Retry-After {failure.retry_after:g}s)",
                                       failure.retry_after) from None
                    delay = max(delay, failure.retry_after)
                log.warning("%s; attempt %d of %d, next in %.2fs", message, attempt, self.max_attempts, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter: between half and all of base * 2^(attempt-1)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _post(self, method: str, params: list[Any]) -> Any:
        """One attempt: the call's result, or _Failure / _RangeTooWide."""
        call_id = next(self._ids)
        body = orjson.dumps({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params})
        try:
            async with self.session.post(self._url, data=body, headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise _Failure("unavailable", _describe(exc)) from None
        if status == 429:
            raise _Failure("rate_limited", "HTTP 429", retry_after=retry_after)
        if status >= 500:
            raise _Failure("unavailable", f"HTTP {status}", retry_after=retry_after)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            if status != 200 and RATE_LIMITED.search(raw[:2000].decode(errors="replace").lower()):
                raise _Failure("rate_limited", f"HTTP {status}", retry_after=retry_after)  # TronGrid's 403
            raise _Failure("bad_response", f"HTTP {status}, not a JSON-RPC answer", retryable=status == 200)
        if answer.get("error") is not None:
            raise _error(method, answer["error"], retry_after)
        if status != 200 or "result" not in answer or answer.get("id") not in (call_id, None):
            raise _Failure("bad_response", f"HTTP {status}, no result for this call", retryable=status == 200)
        return answer["result"]


def _error(method: str, error: Any, retry_after: float | None) -> Exception:
    """A JSON-RPC error answer as the exception that says what to do next."""
    if not isinstance(error, dict):
        return _Failure("bad_response", "a JSON-RPC error that is not an object")
    code, message = error.get("code"), str(error.get("message"))[:300]
    text = (message + " " + str(error.get("data") or "")).lower()
    if method == "eth_getLogs" and RANGE_TOO_WIDE.search(text):
        return _RangeTooWide(f"{message} (code {code})")
    if code == 429 or RATE_LIMITED.search(text):
        return _Failure("rate_limited", f"{message} (code {code})", retry_after=retry_after)
    return _Failure("rpc_error", f"{message} (code {code})", retryable=code != -32601)  # no such method: final


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def _describe(exc: aiohttp.ClientError) -> str:
    """What went wrong, without str(exc): aiohttp's messages carry the URL, and the URL may carry a key."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno  # its strerror may name the host, which some providers make the endpoint's id
        return f"cannot connect ({errno.errorcode.get(code, type(exc.os_error).__name__) if code else 'no route'})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return type(exc).__name__

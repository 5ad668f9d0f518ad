"""The chain reader (billing/recharge/evm.py): Transfer logs parsed from real shapes, and, against ganache through a
proxy that fails on demand, deposits found exactly once through 429s, 500s, timeouts and too-wide ranges, block
hashes that change under a reorg, and errors that name the chain but never the URL."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from Crypto.Hash import keccak
from hypothesis import given
from hypothesis import strategies as st

from billing.recharge import evm
from billing.recharge.addresses import AddressError, evm_to_tron, tron_to_evm
from billing.recharge.evm import EvmClient, RpcError, Transfer, address_topic, parse_transfer_log, topic_address
from tests.chain import ganache
from tests.chain.ganache import Chain, Token, deploy_token
from tests.chain.rpc_proxy import RpcProxy

pytest_plugins = ["tests.chain.fixtures"]

T = TypeVar("T")
SECRET = "sekret-api-key-7f3a"  # in the URL path, as Infura and Alchemy carry keys
PAYER = "0x1111111111111111111111111111111111111111"
DEPOSIT = "0x9858effd232b4033e47d90003d41ec34ecaeda94"
TX = "0x7b2a3ec1cfe1a7c1dc5a5a3e6c8c5a0d8f3d1c7e4b2a9f0e1d2c3b4a59687766"
BLOCK = "0x5c1a7e0f5a7d1e5f4c3b2a19080706050403020100ffeeddccbbaa9988776655"
USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"

# An eth_getLogs entry as geth writes it: a mainnet USDT transfer of 1,250.5 USDT (values made up, shape real).
REAL_LOG: dict[str, Any] = {
    "address": "0xdAC17F958D2ee523a2206206994597C13D831ec7",
    "topics": [evm.TRANSFER_TOPIC, "0x" + "0" * 24 + PAYER[2:], "0x" + "0" * 24 + DEPOSIT[2:]],
    "data": "0x" + (1_250_500_000).to_bytes(32, "big").hex(),
    "blockNumber": "0x1312d00",
    "transactionHash": TX,
    "transactionIndex": "0x5e",
    "blockHash": BLOCK,
    "logIndex": "0x10f",
    "removed": False,
}


def with_(**changes: Any) -> dict[str, Any]:
    entry = dict(REAL_LOG)
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not ...}


# -- pure ---------------------------------------------------------------------------------------------------------

def test_the_transfer_topic_is_the_keccak_of_the_event_signature() -> None:
    digest = keccak.new(digest_bits=256, data=b"Transfer(address,address,uint256)").hexdigest()
    assert evm.TRANSFER_TOPIC == "0x" + digest == ganache.TRANSFER_TOPIC


def test_address_topics_both_ways() -> None:
    checksummed = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    topic = address_topic(checksummed)
    assert topic == "0x000000000000000000000000" + DEPOSIT[2:] == ganache.address_topic(checksummed)
    assert len(topic) == 66
    assert topic_address(topic) == DEPOSIT
    assert topic_address(topic.upper().replace("0X", "0x")) == DEPOSIT
    with pytest.raises(AddressError):
        topic_address("0x0000000000000000000000010000000000000000000000000000000000000001")  # not an address
    with pytest.raises(AddressError):
        topic_address("0x1234")
    with pytest.raises(AddressError):
        address_topic("TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH")  # TRON: converted at the edge, not here


def test_tron_addresses_cross_the_edge_both_ways() -> None:
    tron = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
    topic = address_topic(tron_to_evm(tron))
    assert evm_to_tron(topic_address(topic)) == tron
    assert evm.tron_jsonrpc_url("https://api.trongrid.io/") == "https://api.trongrid.io/jsonrpc"
    assert evm.tron_jsonrpc_url("https://nile.trongrid.io/jsonrpc") == "https://nile.trongrid.io/jsonrpc"


def test_a_real_log_parses() -> None:
    assert parse_transfer_log("ethereum", REAL_LOG) == Transfer(
        chain="ethereum", tx_hash=TX, log_index=0x10F, block_number=20_000_000, block_hash=BLOCK, contract=USDT,
        sender=PAYER, recipient=DEPOSIT, amount_raw=1_250_500_000)
    assert parse_transfer_log("ethereum", with_(removed=...)) is not None  # ganache and some nodes omit it


def test_a_tron_log_parses() -> None:
    """java-tron's /jsonrpc shape: 20-byte hex addresses; an older node may write the 41-prefixed contract and
    hashes without 0x. TRON block hashes start with the block number."""
    tron_block = "0000000003fe1ca05cf728c92ee79f5f2758c3e4e4ea88501826726880e8b81c"
    transfer = parse_transfer_log("tron", with_(address="41a614f803b6fd780986a42c78ec9c7f77e6ded13c",
                                                transactionHash=TX[2:], blockHash=tron_block, blockNumber="0x3fe1ca0"))
    assert transfer is not None
    assert transfer.contract == "0xa614f803b6fd780986a42c78ec9c7f77e6ded13c"
    assert evm_to_tron(transfer.contract) == "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"  # USDT on TRON
    assert (transfer.tx_hash, transfer.block_hash) == (TX, "0x" + tron_block)


@pytest.mark.parametrize("entry", [
    with_(removed=True),  # a reorg took it back
    with_(removed="true"),
    with_(topics=REAL_LOG["topics"] + ["0x" + "0" * 63 + "7"]),  # ERC-721 Transfer: the token id is indexed
    with_(topics=REAL_LOG["topics"][:2]),
    with_(topics=["0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"] + REAL_LOG["topics"][1:]),
    with_(data="0x" + "00" * 64),  # not one 32-byte word
    with_(data="0x"),
    with_(blockNumber=None, blockHash=None),  # a pending log
    with_(logIndex="12"),
    with_(address="0x1234"),
    with_(transactionHash=...),
    with_(topics=None),
    with_(topics=[evm.TRANSFER_TOPIC, 5, "0x" + "0" * 24 + DEPOSIT[2:]]),
    with_(topics=[evm.TRANSFER_TOPIC, "0x" + "1" * 64, "0x" + "0" * 24 + DEPOSIT[2:]]),  # no address in topic 1
    "not a log", None, [], {},
])
def test_what_is_not_a_transfer_is_none(entry: Any) -> None:
    assert parse_transfer_log("ethereum", entry) is None


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@given(st.dictionaries(st.sampled_from(sorted(REAL_LOG)), JSON, max_size=5))
def test_odd_shapes_never_raise(changes: dict[str, Any]) -> None:
    result = parse_transfer_log("ethereum", with_(**changes))
    assert result is None or isinstance(result, Transfer)


@pytest.mark.parametrize("message", [
    "query returned more than 10000 results. Try with this block range [0xBDE5F8, 0x102DBCC].",  # Infura, geth
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit on "
    "the response size, or you can request any block range with a cap of 10K logs in the response.",  # Alchemy
    "Under the Free tier plan, you can make eth_getLogs requests with up to a 10 block range.",  # Alchemy free
    "range 1000000 exceeds limit of 10000",  # Infura
    "eth_getLogs is limited to a 10,000 range",  # QuickNode
    "exceed maximum block range: 5000",  # BSC (--rangelimit), PublicNode
    "exceed max block range: 5000",  # TRON
    "block range too large",  # Base
    "Block range is too large",  # Optimism
    "block range is too wide (maximum 1024)",  # Moonbeam
    "eth_getLogs range is too large, max is 1k blocks",
    "query exceeds max results 20000, retry with the range 23879634-23879696",
    "Block range limit exceeded.",  # Chainstack
])
def test_providers_wordings_of_a_range_too_wide(message: str) -> None:
    assert isinstance(evm._error("eth_getLogs", {"code": -32005, "message": message}, None), evm._RangeTooWide)


@pytest.mark.parametrize("message", ["block range extends beyond current head block", "header not found",
                                     "invalid params", "execution reverted"])
def test_other_errors_are_not_range_errors(message: str) -> None:
    failure = evm._error("eth_getLogs", {"code": -32602, "message": message}, None)
    assert isinstance(failure, evm._Failure) and failure.kind == "rpc_error"


def test_rate_limits_said_in_json_rpc_and_retry_after() -> None:
    limited = evm._error("eth_blockNumber", {"code": -32005, "message": "daily request count exceeded, request "
                                                                        "rate limited"}, 2.0)
    assert isinstance(limited, evm._Failure) and (limited.kind, limited.retry_after) == ("rate_limited", 2.0)
    assert evm._retry_after("3") == 3.0
    assert evm._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now
    assert evm._retry_after("soon") is None and evm._retry_after(None) is None


# -- against ganache ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy(chain: Chain) -> Iterator[RpcProxy]:
    server = RpcProxy(chain.url, hang_seconds=3.0).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_proxy(request: pytest.FixtureRequest) -> None:
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").reset()


def read(url: str, work: Callable[[EvmClient], Awaitable[T]], **options: Any) -> T:
    """Runs `work` with a client for `url`: quick backoff, unless the test says otherwise."""
    settings: dict[str, Any] = {"timeout": 5.0, "max_attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05,
                                "chain": "ganache"} | options

    async def go() -> T:
        async with aiohttp.ClientSession() as session:
            return await work(EvmClient(session, url, **settings))

    return asyncio.run(go())


def client_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the client side logged (the proxy's own access log shows the path it was called at, by design)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")


def new_address() -> str:
    return "0x" + os.urandom(20).hex()


def keyed(transfers: list[Transfer]) -> list[tuple[str, str, int]]:
    return [(t.tx_hash, t.recipient, t.amount_raw) for t in transfers]


@pytest.mark.slow  # ganache
def test_transfers_to_two_deposits_in_one_block_and_another_tokens_ignored(chain: Chain, token: Token,
                                                                            proxy: RpcProxy) -> None:
    fake = deploy_token(chain, name="Tether USD", symbol="USDT")
    payer, first, second, stranger = chain.accounts[5], new_address(), new_address(), new_address()
    token.mint(payer, 100 * 10**6)
    fake.mint(payer, 100 * 10**6)
    start = chain.block_number() + 1
    with chain.one_block():
        a = token.transfer(payer, first, 5 * 10**6)
        b = token.transfer(payer, second, 7_250_000)
        c = token.transfer(payer, first, 1)
        fake.transfer(payer, first, 9 * 10**6)  # a look-alike token to a deposit address
        token.transfer(payer, stranger, 3 * 10**6)  # the real token to an address that is not ours
    block = chain.block_number()
    later = token.transfer(payer, second, 2 * 10**6)

    found = read(proxy.url(), lambda c: c.transfer_logs(token.address, [first, second.upper().replace("0X", "0x")],
                                                        start, chain.block_number()))
    assert keyed(found) == [(a.hash, first, 5 * 10**6), (b.hash, second, 7_250_000), (c.hash, first, 1),
                            (later.hash, second, 2 * 10**6)]
    assert [t.block_number for t in found] == [block, block, block, block + 1]
    assert found[0].log_index < found[1].log_index < found[2].log_index
    assert {t.block_hash for t in found[:3]} == {chain.block_hash(block)}
    assert {t.contract for t in found} == {token.address.lower()}
    assert {t.sender for t in found} == {payer.lower()}
    assert {t.chain for t in found} == {"ganache"}
    assert proxy.answers("eth_getLogs") == ["ok"]  # both recipients in one call


@pytest.mark.slow  # ganache
def test_recipients_are_chunked_across_calls(chain: Chain, token: Token, proxy: RpcProxy) -> None:
    payer, deposits = chain.accounts[6], [new_address() for _ in range(5)]
    token.mint(payer, 10**6)
    start = chain.block_number() + 1
    sent = [token.transfer(payer, d, 1000 + i) for i, d in enumerate(deposits)]
    found = read(proxy.url(), lambda c: c.transfer_logs(token.address, deposits, start, chain.block_number()),
                 max_topics=2)
    assert [t.tx_hash for t in found] == [s.hash for s in sent]
    assert proxy.answers("eth_getLogs") == ["ok"] * 3


@pytest.mark.slow  # ganache
def test_block_numbers_hashes_and_chain_id(chain: Chain, proxy: RpcProxy) -> None:
    head = chain.mine(2)

    async def work(client: EvmClient) -> tuple[int, int, list[str | None], str | None]:
        hashes = [await client.block_hash(n) for n in (0, head - 1, head)]
        return await client.chain_id(), await client.block_number(), hashes, await client.block_hash(head + 1000)

    chain_id, number, hashes, missing = read(proxy.url(), work)
    assert (chain_id, number) == (ganache.CHAIN_ID, head)
    assert hashes == [chain.block_hash(n) for n in (0, head - 1, head)]
    assert all(h is not None and len(h) == 66 and h == h.lower() for h in hashes)
    assert missing is None  # no such block yet


@pytest.mark.slow  # ganache
def test_429s_and_500s_are_retried_and_every_log_still_comes_back(chain: Chain, token: Token,
                                                                  proxy: RpcProxy) -> None:
    payer, deposit = chain.accounts[7], new_address()
    token.mint(payer, 10**6)
    start = chain.block_number() + 1
    sent = [token.transfer(payer, deposit, n) for n in (11, 22, 33)]
    expected = read(proxy.url(), lambda c: c.transfer_logs(token.address, [deposit], start, chain.block_number()))
    assert [t.tx_hash for t in expected] == [s.hash for s in sent]

    proxy.reset()
    proxy.fail_next(1, "429", retry_after="1")
    proxy.fail_next(2, "500")
    began = time.monotonic()
    found = read(proxy.url(), lambda c: c.transfer_logs(token.address, [deposit], start, chain.block_number()),
                 backoff_max=2.0)
    assert found == expected
    assert proxy.answers("eth_getLogs") == ["429", "500", "500", "ok"]
    assert time.monotonic() - began >= 1.0  # the Retry-After was waited out


@pytest.mark.slow  # ganache
def test_a_range_too_wide_is_halved_down_and_every_transfer_comes_once(chain: Chain, token: Token,
                                                                       proxy: RpcProxy) -> None:
    payer, deposit = chain.accounts[8], new_address()
    token.mint(payer, 10**6)
    start = chain.block_number() + 1
    sent = []
    for n in range(1, 6):
        sent.append(token.transfer(payer, deposit, n))
        chain.mine(n)  # transfers spread over a 20-block range, at uneven gaps
    end = chain.block_number()
    proxy.refuse_ranges_wider_than(3)

    async def work(client: EvmClient) -> tuple[list[Transfer], int, list[Transfer], int | None]:
        first = await client.transfer_logs(token.address, [deposit], start, end)
        calls_before = len(proxy.calls)
        return first, calls_before, await client.transfer_logs(token.address, [deposit], start, end), client.max_span

    found, calls_before, again, learned = read(proxy.url(), work)
    assert [t.tx_hash for t in found] == [s.hash for s in sent]
    assert again == found
    assert learned is not None and learned <= 3
    calls = [(int(p[0]["fromBlock"], 16), int(p[0]["toBlock"], 16), answer) for _, p, answer in proxy.calls]
    first_pass, second_pass = calls[:calls_before], calls[calls_before:]
    assert "range" in {answer for _, _, answer in first_pass}
    served = sorted((lo, hi) for lo, hi, answer in first_pass if answer == "ok")
    assert served[0][0] == start and served[-1][1] == end
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in zip(served, served[1:]))  # no gap, no overlap
    assert all(hi - lo + 1 <= 3 for lo, hi in served)
    assert second_pass and all(answer == "ok" for _, _, answer in second_pass)  # the width was learned


@pytest.mark.slow  # ganache
@pytest.mark.parametrize("fault,kind", [("500", "unavailable"), ("429", "rate_limited"), ("rpc_error", "rpc_error"),
                                        ("hang", "timeout"), ("garbage", "bad_response")])
def test_attempts_run_out_into_an_rpc_error_of_its_kind(proxy: RpcProxy, fault: str, kind: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    proxy.fail_next(3, fault)
    url = proxy.url(f"/v3/{SECRET}?key={SECRET}")
    with caplog.at_level(logging.DEBUG), pytest.raises(RpcError) as raised:
        read(url, lambda c: c.block_number(), max_attempts=3, timeout=0.5)
    assert raised.value.kind == kind
    assert proxy.answers() == [fault] * 3
    assert "chain ganache" in str(raised.value) and "after 3 attempts" in str(raised.value)
    assert len([r for r in caplog.records if r.name == "tokentoll.recharge"]) == 2  # one warning per retry
    assert SECRET not in str(raised.value) and SECRET not in client_log(caplog)
    assert raised.value.__cause__ is None and SECRET not in repr(raised.value.__context__)


@pytest.mark.slow  # ganache
def test_a_retry_after_longer_than_we_wait_is_handed_to_the_caller(proxy: RpcProxy) -> None:
    proxy.fail_next(1, "429", retry_after="120")
    with pytest.raises(RpcError) as raised:
        read(proxy.url(), lambda c: c.block_number(), backoff_max=1.0)
    assert (raised.value.kind, raised.value.retry_after) == ("rate_limited", 120.0)
    assert proxy.answers() == ["429"]


def test_no_server_at_all_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{ganache.free_port()}/v3/{SECRET}"
    with caplog.at_level(logging.DEBUG), pytest.raises(RpcError) as raised:
        read(url, lambda c: c.chain_id(), max_attempts=2)
    assert raised.value.kind == "unavailable"
    assert SECRET not in str(raised.value) and SECRET not in client_log(caplog) and "127.0.0.1" not in str(raised.value)


@pytest.mark.slow  # ganache
def test_a_reorg_drops_the_transfer_and_changes_the_block_hash(chain: Chain, token: Token, proxy: RpcProxy) -> None:
    payer, deposit = chain.accounts[9], new_address()
    token.mint(payer, 10 * 10**6)
    head = chain.block_number()
    snapshot = chain.snapshot()
    sent = token.transfer(payer, deposit, 3 * 10**6)

    async def look(client: EvmClient) -> tuple[list[Transfer], str | None]:
        return await client.transfer_logs(token.address, [deposit], head, head + 1), await client.block_hash(head + 1)

    seen, seen_hash = read(proxy.url(), look)
    assert [t.tx_hash for t in seen] == [sent.hash] and seen[0].block_hash == seen_hash

    chain.revert(snapshot)
    chain.mine()  # another block at the same height
    after, new_hash = read(proxy.url(), look)
    assert after == []
    assert new_hash is not None and new_hash != seen_hash


@pytest.mark.slow  # ganache
def test_bad_arguments_are_refused_before_any_call(proxy: RpcProxy) -> None:
    with pytest.raises(ValueError):
        read(proxy.url(), lambda c: c.transfer_logs(USDT, [DEPOSIT], 10, 9))
    with pytest.raises(AddressError):
        read(proxy.url(), lambda c: c.transfer_logs(USDT, ["TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"], 1, 2))
    assert read(proxy.url(), lambda c: c.transfer_logs(USDT, [], 1, 2)) == []
    assert proxy.answers() == []
    assert "127.0.0.1" not in read(proxy.url(), lambda c: asyncio.sleep(0, repr(c)))  # repr: the chain only

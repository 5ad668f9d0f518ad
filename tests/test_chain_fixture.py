"""The local chain the USDT recharge tests run against (tests/chain/): ganache, TestUSDT, and the chain
events a deposit watcher must handle — several transfers in one block, many blocks at once, a reorg
simulated by snapshot and revert, and a look-alike token sending to the same address."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.chain.ganache import (TRANSFER_TOPIC, Chain, RpcError, Token, address_topic, decode_transfer,
                                 deploy_token, encode_call, port_is_free)

pytest_plugins = ["tests.chain.fixtures"]
pytestmark = pytest.mark.slow


def new_address() -> str:
    """A deposit address no other test sends to."""
    return "0x" + os.urandom(20).hex()


def transfers_to(chain: Chain, to: str, contract: str | None, first: int, last: int) -> list[dict[str, Any]]:
    """The watcher's query: Transfer logs to `to` (topic 2), of one contract or of any, in a block range."""
    log_filter: dict[str, Any] = {"fromBlock": hex(first), "toBlock": hex(last),
                                  "topics": [TRANSFER_TOPIC, None, address_topic(to)]}
    if contract is not None:
        log_filter["address"] = contract
    return chain.get_logs(log_filter)


def test_token_has_six_decimals_and_only_its_deployer_mints(chain: Chain, token: Token) -> None:
    assert token.decimals() == 6
    assert token.read_string("symbol()") == "USDT"
    assert token.deploy_tx.block_number is not None
    holder = chain.accounts[1]
    before = token.balance_of(holder)
    minted = token.mint(holder, 250 * 10**6)
    assert minted.block_number == chain.block_number()
    assert token.balance_of(holder) == before + 250 * 10**6
    with pytest.raises(RpcError, match="only the deployer mints"):
        chain.send(holder, token.address, encode_call("mint(address,uint256)", holder, 1))


def test_two_transfers_in_one_block_give_two_logs(chain: Chain, token: Token) -> None:
    payer, deposit = chain.accounts[2], new_address()
    token.mint(payer, 100 * 10**6)
    with chain.one_block():
        first = token.transfer(payer, deposit, 5 * 10**6)
        second = token.transfer(payer, deposit, 7_250_000)
        assert first.block_number is None and second.block_number is None  # still in the pool
    first, second = chain.landed(first), chain.landed(second)
    assert first.block_number == second.block_number == chain.block_number()
    block = first.block_number
    assert block is not None

    logs = transfers_to(chain, deposit, token.address, block, block)
    assert [log["transactionHash"] for log in logs] == [first.hash, second.hash]
    assert [decode_transfer(log) for log in logs] == [(payer.lower(), deposit, 5 * 10**6),
                                                      (payer.lower(), deposit, 7_250_000)]
    assert {log["blockHash"] for log in logs} == {chain.block_hash(block)}
    assert len({int(log["logIndex"], 16) for log in logs}) == 2  # (tx hash, log index) keys each deposit
    assert all(log["address"].lower() == token.address.lower() for log in logs)
    assert token.balance_of(deposit) == 12_250_000


def test_mine_twenty_blocks_at_once(chain: Chain) -> None:
    head = chain.block_number()
    assert chain.mine(20) == head + 20
    assert len({chain.block_hash(n) for n in range(head, head + 21)}) == 21


def test_revert_to_snapshot_drops_the_log_like_a_reorg(chain: Chain, token: Token) -> None:
    payer, deposit = chain.accounts[3], new_address()
    token.mint(payer, 10 * 10**6)
    head = chain.block_number()
    snapshot = chain.snapshot()
    sent = token.transfer(payer, deposit, 3 * 10**6)
    assert sent.block_number == head + 1
    seen_hash = chain.block_hash(head + 1)
    assert len(transfers_to(chain, deposit, token.address, head, head + 1)) == 1

    chain.revert(snapshot)
    assert chain.block_number() == head
    assert transfers_to(chain, deposit, token.address, 0, head + 1) == []  # no `removed: true`: just gone
    assert chain.receipt(sent.hash) is None
    assert token.balance_of(deposit) == 0
    chain.mine()  # a new block at the same height: the hash a watcher stored no longer matches
    assert chain.block_hash(head + 1) != seen_hash


def test_look_alike_token_logs_carry_another_contract(chain: Chain, token: Token) -> None:
    fake = deploy_token(chain, name="Tether USD", symbol="USDT")
    payer, deposit = chain.accounts[4], new_address()
    first = chain.block_number() + 1
    token.mint(payer, 10**6)
    fake.mint(payer, 10**6)
    real_tx = token.transfer(payer, deposit, 10**6)
    fake_tx = fake.transfer(payer, deposit, 10**6)
    last = chain.block_number()

    any_contract = transfers_to(chain, deposit, None, first, last)
    assert {log["transactionHash"]: log["address"].lower() for log in any_contract} == {
        real_tx.hash: token.address.lower(), fake_tx.hash: fake.address.lower()}
    assert fake.address.lower() != token.address.lower()
    assert [log["transactionHash"] for log in transfers_to(chain, deposit, token.address, first, last)] == [
        real_tx.hash]


def test_stop_frees_the_port(node_tools: None) -> None:
    own = Chain().start()
    proc = own.proc
    assert proc is not None and not port_is_free(own.port)
    own.stop()
    assert proc.poll() is not None
    assert port_is_free(own.port)

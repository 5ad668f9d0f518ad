"""USDT recharge orders, the pure parts of billing/recharge/orders.py: addresses as a person pays to them, payment
URIs (EIP-681 on EVM chains, with or without a chain id; TRON's `tron:` form), an order's and a deposit's JSON
shapes, and the order refusals made before the store is asked anything."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from billing.recharge.addresses import evm_key, tron_to_evm
from billing.recharge import amounts
from billing.recharge.orders import (
    OrderError, RechargeDesk, payment_uri, shape_deposit, shape_order, shown_address,
)
from core.config import Chain, Recharge

# the first deposit addresses of the standard test mnemonic (tests/test_recharge_pure.py)
EVM_ADDRESS = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
TRON_ADDRESS = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
USDT_ERC20 = "0xdac17f958d2ee523a2206206994597c13d831ec7"  # stored lower-case, as the config keeps it
USDT_TRC20 = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


def chain(kind: str = "evm", chain_id: int | None = 1, confirmations: int = 12) -> Chain:
    contract = tron_to_evm(USDT_TRC20) if kind == "tron" else USDT_ERC20
    return Chain(name=kind, kind=kind, rpc_url="http://127.0.0.1:1", contract=contract, xpub="xpub-not-used",
                 confirmations=confirmations, chain_id=chain_id)


def order_row(**over: Any) -> dict[str, Any]:
    row = {"id": 7, "chain": "evm", "status": "pending", "address": evm_key(EVM_ADDRESS), "amount_raw": "12500000",
           "created_at": 1000.0, "expires_at": 4600.0, "deposit_id": None, "deposit_block": None, "chain_head": None}
    return {**row, **over}


def test_shown_address_is_eip55_on_evm_chains_and_the_t_form_on_tron() -> None:
    assert shown_address(chain("evm"), evm_key(EVM_ADDRESS)) == EVM_ADDRESS
    assert shown_address(None, evm_key(EVM_ADDRESS)) == EVM_ADDRESS  # a chain no longer configured
    assert shown_address(chain("tron"), tron_to_evm(TRON_ADDRESS)) == TRON_ADDRESS


def test_payment_uri_is_eip681_with_the_chain_id_when_there_is_one() -> None:
    assert payment_uri(chain("evm", chain_id=1), EVM_ADDRESS, 12_500_000) == (
        f"ethereum:{USDT_ERC20}@1/transfer?address={EVM_ADDRESS}&uint256=12500000")
    assert payment_uri(chain("evm", chain_id=None), EVM_ADDRESS, 12_500_000) == (
        f"ethereum:{USDT_ERC20}/transfer?address={EVM_ADDRESS}&uint256=12500000")


def test_payment_uri_on_tron_names_the_token_contract_and_the_amount_in_tokens() -> None:
    assert payment_uri(chain("tron"), TRON_ADDRESS, 12_500_000) == (
        f"tron:{TRON_ADDRESS}?token={USDT_TRC20}&amount=12.5")


def test_a_pending_order_shows_how_to_pay_and_its_time_left() -> None:
    shaped = shape_order(order_row(), chain("evm"), now=1600.5)
    assert shaped == {
        "id": 7, "object": "recharge.order", "chain": "evm", "status": "pending", "address": EVM_ADDRESS,
        "amount": "12.5", "token": "USDT", "created_at": 1000, "expires_at": 4600, "expires_in": 2999,
        "payment_uri": f"ethereum:{USDT_ERC20}@1/transfer?address={EVM_ADDRESS}&uint256=12500000",
        "deposit_id": None,
    }
    assert shape_order(order_row(status="expired"), chain("evm"), now=9999)["expires_in"] == 0
    assert shape_order(order_row(), None, now=1600)["payment_uri"] is None


@pytest.mark.parametrize("block,head,received", [(100, 101, 2), (100, 100, 1), (100, 500, 12), (None, 101, 0),
                                                 (100, 90, 0)])
def test_a_confirming_order_shows_received_of_required_confirmations(block: int | None, head: int,
                                                                      received: int) -> None:
    shaped = shape_order(order_row(status="confirming", deposit_block=block, chain_head=head), chain("evm"), now=2000)
    assert shaped["confirmations"] == {"received": received, "required": 12}
    assert shaped["expires_in"] == 0


def test_a_tron_deposit_shows_its_t_address_credit_and_confirmations() -> None:
    row = {"id": 3, "chain": "tron", "tx_hash": "0xabc", "log_index": 0, "address": tron_to_evm(TRON_ADDRESS),
           "amount_raw": "25000000", "credit": 25 * 10**9, "status": "seen", "block_number": 50, "chain_head": 52,
           "order_id": 7, "note": None, "seen_at": 1000.9, "credited_at": None}
    assert shape_deposit(row, chain("tron", confirmations=19)) == {
        "id": 3, "object": "recharge.deposit", "chain": "tron", "tx_hash": "0xabc", "log_index": 0,
        "address": TRON_ADDRESS, "amount": "25", "credit_usd": "25.000000000", "status": "seen", "block_number": 50,
        "confirmations": {"received": 3, "required": 19}, "order_id": 7, "note": None, "seen_at": 1000,
        "credited_at": None,
    }


class NoStore:
    """A store that must not be reached: the refusals below come first."""

    async def run(self, fn: Any, *args: Any) -> Any:
        raise AssertionError(f"the store was asked: {fn.__name__}")


@pytest.mark.parametrize("chain_name,amount,param,message", [
    ("nowhere", "25", "chain", "'chain' must be one of: evm, tron"),
    (None, "25", "chain", "'chain' must be one of: evm, tron"),
    ("evm", 25, "amount", "'amount' is required"),
    ("evm", "lots", "amount", "'amount': not an amount"),
    ("evm", "0.5", "amount", "the smallest recharge is 1.00 USD"),
])
def test_an_order_is_refused_with_the_field_at_fault(chain_name: Any, amount: Any, param: str, message: str) -> None:
    desk = RechargeDesk({"tron": chain("tron"), "evm": chain("evm")}, Recharge(), NoStore())  # type: ignore[arg-type]
    assert desk.chain_names() == ["evm", "tron"]
    with pytest.raises(OrderError) as refused:
        asyncio.run(desk.create_order(1, chain_name, amount))
    assert refused.value.param == param and refused.value.message.startswith(message)


@pytest.mark.parametrize("fee,amount,least", [("0", "0.5", "1 USDT"), ("0.01", "1.01", "1.010102 USDT"),
                                               ("0.025", "1", "1.025642 USDT")])
def test_the_smallest_order_says_how_much_to_send_fee_included(fee: str, amount: str, least: str) -> None:
    """Issue 18.12: 1.01 USDT with a 1% fee was refused as 'the smallest recharge is 1.00 USD', which hid the fee."""
    desk = RechargeDesk({"evm": chain("evm")}, Recharge(fee=Decimal(fee)), NoStore())  # type: ignore[arg-type]
    with pytest.raises(OrderError) as refused:
        asyncio.run(desk.create_order(1, "evm", amount))
    message = refused.value.message
    assert message.startswith("the smallest recharge is 1.00 USD credited") and message.endswith(least), message
    assert ("fee" in message) == (fee != "0")
    raw = amounts.raw_amount(least.split()[0], 6)  # the amount it names is enough, and one unit less is not
    assert amounts.credit_for(raw, 6, Decimal(1), Decimal(fee)) >= 10**9 > amounts.credit_for(raw - 1, 6, Decimal(1),
                                                                                            Decimal(fee))


@pytest.mark.parametrize("raw_id", ["abc", "", "-1", "1.0", "²", str(2**63)])
def test_an_order_id_that_is_no_order_id_finds_nothing(raw_id: str) -> None:
    desk = RechargeDesk({}, Recharge(), NoStore())  # type: ignore[arg-type]
    assert asyncio.run(desk.order(1, raw_id)) is None

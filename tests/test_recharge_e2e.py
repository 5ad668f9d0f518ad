"""USDT recharge end to end: the gateway watching a real local chain (ganache) with our own 6-decimal token.
A deposit is credited only after N confirmations, exactly once, also across a restart between detection and
confirmation; another token is ignored; a reorg before finality removes a deposit, which is never credited."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.chain.ganache import Chain, Token, deploy_token
from tests.chain.gateway_config import CONFIRMATIONS, USDT, recharge_config
from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for

pytest_plugins = ["tests.chain.fixtures"]
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def setup(chain: Chain, token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("recharge")
    gws = serve_gateway(tmp, lambda log: recharge_config(chain.url, token, chain.block_number(), log), {}, "payer", "0",
                        ("Traceback",))
    gw = next(gws)
    address = cli(gw.config, "recharge", "address", "payer", "local", env=gw.env)["address"]
    token.mint(token.deployer, 1_000 * USDT)
    key = cli(gw.config, "keys", "create", "--account", "payer", env=gw.env)["key"]
    yield {"gw": gw, "config": gw.config, "address": address, "tmp": tmp, "gens": gws, "key": key}
    try:
        next(gws)
    except StopIteration:
        pass


def deposits(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {d["tx_hash"]: d for d in cli(gw.config, "recharge", "deposits", "--account", "payer", env=gw.env)}


def status_of(gw: GatewayProcess, tx_hash: str) -> str | None:
    found = deposits(gw).get(tx_hash)
    return found["status"] if found else None


def balance(gw: GatewayProcess) -> int:
    return int(cli(gw.config, "wallet", "show", "payer", env=gw.env)["balance"])


def test_credited_after_n_confirmations_exactly_once_across_a_restart(setup: dict[str, Any], chain: Chain,
                                                                       token: Token) -> None:
    gw: GatewayProcess = setup["gw"]
    first = token.transfer(token.deployer, setup["address"], 25 * USDT)  # its own block (instamine)
    wait_for(lambda: status_of(gw, first.hash) == "seen", 20, "the deposit to be found")
    second = token.transfer(token.deployer, setup["address"], 2 * USDT)  # the next block
    wait_for(lambda: status_of(gw, second.hash) == "seen", 20, "the second deposit to be found")
    # the pass that found the second saw the first with 2 confirmations of 3: not credited
    assert status_of(gw, first.hash) == "seen" and balance(gw) == 0
    gw.stop()  # a restart between detection and confirmation
    chain.mine(CONFIRMATIONS + 2)
    again = GatewayProcess(gw.config, gw.log_path, gw.env)
    setup["gw"] = again
    try:
        wait_for(lambda: {status_of(again, first.hash), status_of(again, second.hash)} == {"credited"}, 20,
                 "both deposits to be credited")
        assert balance(again) == 27 * 10**9
        chain.mine(5)
        db = sqlite3.connect(setup["tmp"] / "tokentoll.db")
        credits = db.execute("SELECT COUNT(*), SUM(balance_delta) FROM ledger WHERE kind = 'credit' AND note LIKE "
                             "'USDT deposit local %'").fetchone()
        db.close()
        assert credits == (2, 27 * 10**9)  # one credit each, whatever the passes since
    finally:
        again.stop()
    setup["gw"] = GatewayProcess(gw.config, gw.log_path, gw.env)


def test_another_token_is_ignored_and_a_reorg_before_finality_is_never_credited(
        setup: dict[str, Any], chain: Chain, token: Token) -> None:
    gw: GatewayProcess = setup["gw"]
    before = balance(gw)
    other = deploy_token(chain, symbol="FAKE")
    other.mint(other.deployer, 100 * USDT)
    fake = other.transfer(other.deployer, setup["address"], 50 * USDT)
    snapshot = chain.snapshot()
    doomed = token.transfer(token.deployer, setup["address"], 7 * USDT)
    wait_for(lambda: status_of(gw, doomed.hash) == "seen", 20, "the doomed deposit to be found")
    chain.revert(snapshot)  # the block that carried it is gone; the chain goes on without it
    chain.mine(CONFIRMATIONS + 2)
    wait_for(lambda: status_of(gw, doomed.hash) == "dropped", 20, "the reorged deposit to be dropped")
    marker = token.transfer(token.deployer, setup["address"], 1 * USDT)
    chain.mine(CONFIRMATIONS)
    wait_for(lambda: status_of(gw, marker.hash) == "credited", 20, "a later deposit to be credited")
    assert balance(gw) == before + 1 * 10**9  # the reorged 7 USDT never, the later 1 USDT once
    assert status_of(gw, fake.hash) is None  # another token's transfer is not a deposit
    assert status_of(gw, doomed.hash) == "dropped"
    gw.stop()


def api(setup: dict[str, Any], method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or setup['key']}"}
    return httpx.request(method, setup["gw"].url + path, headers=headers, timeout=10, **kwargs)


def test_an_order_shows_how_to_pay_and_follows_its_deposit_to_the_credit(setup: dict[str, Any], chain: Chain,
                                                                          token: Token) -> None:
    lasting = setup["tmp"] / "config-orders-60s.toml"  # the same database and log; an order the watcher must
    lasting.write_text(setup["config"].read_text().replace("order_ttl = 5", "order_ttl = 60"))  # see in time
    setup["gw"] = GatewayProcess(lasting, setup["gw"].log_path, setup["gw"].env)
    gw = setup["gw"]
    try:
        created = api(setup, "POST", "/v1/recharge/orders", json={"chain": "local", "amount": "12.5"})
        assert created.status_code == 201, created.text
        order = created.json()
        assert (order["status"], order["amount"], order["address"]) == ("pending", "12.5", setup["address"])
        assert order["payment_uri"] == (f"ethereum:{token.address.lower()}@1337/transfer?address="
                                        f"{setup['address']}&uint256=12500000")
        assert 0 < order["expires_in"] <= 60
        paid = token.transfer(token.deployer, setup["address"], 12_500_000)

        def confirming() -> dict[str, Any] | None:
            now = api(setup, "GET", f"/v1/recharge/orders/{order['id']}").json()
            return now if now["status"] == "confirming" else None

        following = wait_for(confirming, 20, "the order to see its payment")
        assert following["confirmations"]["required"] == CONFIRMATIONS
        assert 1 <= following["confirmations"]["received"] < CONFIRMATIONS
        chain.mine(CONFIRMATIONS)
        wait_for(lambda: api(setup, "GET", f"/v1/recharge/orders/{order['id']}").json()["status"] == "credited", 20,
                 "the order to be credited")
        records = api(setup, "GET", "/v1/recharge/deposits").json()["data"]
        record = next(r for r in records if r["tx_hash"] == paid.hash)
        assert (record["status"], record["credit_usd"], record["order_id"]) == ("credited", "12.500000000",
                                                                                  order["id"])
        assert record["confirmations"] == {"received": CONFIRMATIONS, "required": CONFIRMATIONS}
    finally:
        gw.stop()


def test_an_expired_order_then_a_late_payment_is_credited_and_recorded(setup: dict[str, Any], chain: Chain,
                                                                        token: Token) -> None:
    setup["gw"] = GatewayProcess(setup["config"], setup["gw"].log_path, setup["gw"].env)
    gw = setup["gw"]
    try:
        order = api(setup, "POST", "/v1/recharge/orders", json={"chain": "local", "amount": "3"}).json()
        wait_for(lambda: api(setup, "GET", f"/v1/recharge/orders/{order['id']}").json()["status"] == "expired", 10,
                 "the order to expire")
        before = balance(gw)
        late = token.transfer(token.deployer, setup["address"], 3 * USDT)
        chain.mine(CONFIRMATIONS)
        wait_for(lambda: status_of(gw, late.hash) == "credited", 20, "the late payment to be credited")
        assert balance(gw) == before + 3 * 10**9  # a late payment is never lost
        record = next(r for r in api(setup, "GET", "/v1/recharge/deposits").json()["data"] if r["tx_hash"] == late.hash)
        assert record["order_id"] == order["id"] and record["note"] == f"arrived after order {order['id']} expired"
        assert api(setup, "GET", f"/v1/recharge/orders/{order['id']}").json()["status"] == "expired"
        listed = {o["id"]: o for o in cli(gw.config, "recharge", "orders", "--account", "payer", env=gw.env)}
        assert (listed[order["id"]]["status"], listed[order["id"]]["amount"]) == ("expired", "3")  # the operator's view
    finally:
        gw.stop()


def test_orders_refuse_bad_input_and_other_accounts(setup: dict[str, Any]) -> None:
    setup["gw"] = GatewayProcess(setup["config"], setup["gw"].log_path, setup["gw"].env)
    gw = setup["gw"]
    try:
        for body, message in (({"chain": "mars", "amount": "5"}, "'chain' must be one of: local"),
                              ({"chain": "local", "amount": 5}, "decimal string"),
                              ({"chain": "local", "amount": "0.0000001"}, "at most 6 decimals"),
                              ({"chain": "local", "amount": "0.5"}, "the smallest recharge is 1.00 USD")):
            refused = api(setup, "POST", "/v1/recharge/orders", json=body)
            assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
        assert api(setup, "POST", "/v1/recharge/orders", content=b"{nope").status_code == 400
        assert httpx.get(gw.url + "/v1/recharge/orders").status_code == 401
        cli(gw.config, "accounts", "create", "stranger", env=gw.env)
        other_key = cli(gw.config, "keys", "create", "--account", "stranger", env=gw.env)["key"]
        mine = api(setup, "POST", "/v1/recharge/orders", json={"chain": "local", "amount": "5"}).json()
        assert api(setup, "GET", f"/v1/recharge/orders/{mine['id']}", key=other_key).status_code == 404
        assert api(setup, "GET", "/v1/recharge/orders", key=other_key).json()["data"] == []
        theirs = api(setup, "POST", "/v1/recharge/orders", key=other_key, json={"chain": "local", "amount": "5"})
        assert theirs.json()["address"] != setup["address"]  # each account has its own address
    finally:
        gw.stop()


def test_an_rpc_outage_skips_nothing_and_two_accounts_paid_in_one_block_are_both_credited(
        chain: Chain, token: Token, tmp_path: Path) -> None:
    from tests.chain.rpc_proxy import RpcProxy

    proxy = RpcProxy(chain.url).start()
    try:
        failing = proxy.url("/v3/fake-key")  # the gateway reads the chain through the failing proxy
        gws = serve_gateway(tmp_path, lambda log: recharge_config(failing, token, chain.block_number(), log,
                                                                  order_ttl=60), {}, "first", "0", ("Traceback",))
        gw = next(gws)
        cli(gw.config, "accounts", "create", "second", env=gw.env)
        to_first = cli(gw.config, "recharge", "address", "first", "local", env=gw.env)["address"]
        to_second = cli(gw.config, "recharge", "address", "second", "local", env=gw.env)["address"]
        token.mint(token.deployer, 10 * USDT)
        proxy.fail_next(4, "500", method="eth_getLogs")
        proxy.fail_next(3, "429", method="eth_blockNumber", retry_after="1")
        with chain.one_block():  # two accounts paid in one block: one eth_getLogs range holds both
            first = token.transfer(token.deployer, to_first, 4 * USDT)
            second = token.transfer(token.deployer, to_second, 6 * USDT)
        chain.mine(CONFIRMATIONS)

        def credited() -> bool:
            rows = {d["tx_hash"]: d["status"] for d in cli(gw.config, "recharge", "deposits", env=gw.env)}
            return rows.get(first.hash) == rows.get(second.hash) == "credited"

        wait_for(credited, 60, "both deposits to be credited after the outage")
        assert "500" in proxy.answers("eth_getLogs") and "429" in proxy.answers("eth_blockNumber")
        balances = [cli(gw.config, "wallet", "show", name, env=gw.env)["balance"] for name in ("first", "second")]
        assert balances == [4 * 10**9, 6 * 10**9]
        logged = "".join(gw.stderr_lines) + gw.log_path.read_text()
        assert "fake-key" not in logged  # the RPC URL (it may carry a provider's key) is never written
        with pytest.raises(StopIteration):
            next(gws)
    finally:
        proxy.stop()


def test_a_trc20_deposit_on_tron_is_credited_to_the_t_address(tmp_path: Path) -> None:
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

    from billing.recharge import addresses
    from tests.tron_stub import TronStub

    tron_xpub = Bip44.FromSeed(Bip39SeedGenerator("abandon " * 11 + "about").Generate(), Bip44Coins.TRON) \
        .Purpose().Coin().Account(0).PublicKey().ToExtended()
    usdt_trc20 = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
    stub = TronStub().start()
    try:
        config = base_config(tmp_path / "requests.log") + demo_provider() + f"""
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
price = {{ input = "1", output = "1" }}

[chains.tron]
kind = "tron"
rpc_url = "{stub.url}"
contract = "{usdt_trc20}"
xpub = "{tron_xpub}"
confirmations = 19
poll_interval = 0.1
"""
        gws = serve_gateway(tmp_path, lambda log: config, {}, "tron-user", "0", ("Traceback",))
        gw = next(gws)
        shown = cli(gw.config, "recharge", "address", "tron-user", "tron", env=gw.env)["address"]
        assert shown.startswith("T") and len(shown) == 34
        tx = stub.transfer(addresses.tron_to_evm(usdt_trc20), addresses.tron_to_evm(shown), 12 * USDT)
        stub.transfer("0x" + "99" * 20, addresses.tron_to_evm(shown), 50 * USDT)  # another TRC-20: ignored

        def record() -> dict[str, Any] | None:
            return next((d for d in cli(gw.config, "recharge", "deposits", env=gw.env) if d["tx_hash"] == tx), None)

        assert wait_for(record, 20, "the TRON deposit to be seen")["status"] == "seen"
        stub.mine(18)  # 19 confirmations, the block itself included
        wait_for(lambda: (record() or {}).get("status") == "credited", 20, "the TRON deposit to be credited")
        found = record()
        assert found is not None and (found["address"], found["amount"]) == (shown, "12")
        assert cli(gw.config, "wallet", "show", "tron-user", env=gw.env)["balance"] == 12 * 10**9
        assert len(cli(gw.config, "recharge", "deposits", env=gw.env)) == 1
        with pytest.raises(StopIteration):
            next(gws)
    finally:
        stub.stop()

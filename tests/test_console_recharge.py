"""The console's Recharge pages over HTTP, against a real local chain (ganache): an order made in the console shows
how to pay (address, exact amount, QR code, time left) and follows its payment (pending, confirming k/N, credited)
to the wallet; the records list the deposit's transaction hash; another account sees none of it; bad input is a 400."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chain.ganache import Chain, Token
from tests.conftest import GatewayProcess, base_config, demo_provider, serve_gateway, wait_for
from tests.console_client import ConsoleClient
from tests.chain.gateway_config import CONFIRMATIONS, USDT, recharge_config

pytest_plugins = ["tests.chain.fixtures"]
pytestmark = pytest.mark.slow

ORDER_PATH = re.compile(r"/console/recharge/orders/(\d+)")


def by_id(page: str, element_id: str) -> str:
    """The text inside the element with this id (a leaf: no nested tags), unescaped."""
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert found, f"no element #{element_id} on the page"
    return html.unescape(found.group(1)).strip()


def order_ids(visitor: ConsoleClient) -> list[str]:
    page = visitor.get("/console/recharge")
    assert page.status_code == 200, page.text
    return re.findall(r'data-order-id="(\d+)"', page.text)


@pytest.fixture(scope="module")
def gw(chain: Chain, token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    token.mint(token.deployer, 100 * USDT)
    yield from serve_gateway(
        tmp_path_factory.mktemp("console-recharge"),
        lambda log: recharge_config(chain.url, token, chain.block_number(), log, order_ttl=600),
        {}, "house", "0", ("Traceback",))


@pytest.fixture(scope="module")
def payer(gw: GatewayProcess) -> ConsoleClient:
    visitor = ConsoleClient(gw.url)
    visitor.sign_up("payer@example.com")
    return visitor


@pytest.fixture(scope="module")
def stranger(gw: GatewayProcess) -> ConsoleClient:
    visitor = ConsoleClient(gw.url)
    visitor.sign_up("stranger@example.com")
    return visitor


def test_an_order_made_in_the_console_follows_its_payment_to_the_wallet(
        gw: GatewayProcess, payer: ConsoleClient, stranger: ConsoleClient, chain: Chain, token: Token) -> None:
    form = payer.get("/console/recharge")
    assert form.status_code == 200
    assert by_id(form.text, "available") == "$0.00"
    assert '<option value="local"' in form.text and 'action="/console/recharge/orders"' in form.text
    assert "The smallest recharge credits $1.00." in form.text

    made = payer.post("/console/recharge/orders", {"chain": "local", "amount": " 12.5 "})
    assert made.status_code == 303, made.text
    path = made.headers["location"]
    matched = ORDER_PATH.fullmatch(path)
    assert matched, path
    order_id = matched.group(1)

    shown = payer.get(path)
    assert shown.status_code == 200
    page = shown.text
    address = by_id(page, "order-address")
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address) and address != address.lower()  # EIP-55 checksummed
    assert by_id(page, "order-amount") == "12.5"
    assert "exactly 12.5 USDT" in html.unescape(page)
    assert by_id(page, "payment-uri") == (f"ethereum:{token.address.lower()}@1337/transfer?address={address}"
                                          f"&uint256=12500000")
    qr = re.search(r'<svg viewBox="0 0 (\d+) \1" class="qr-code">.*?</svg>', page, re.S)
    assert qr and int(qr.group(1)) >= 21 + 8 and "<path" in qr.group(0)  # a QR code and its quiet zone
    assert " style=" not in page and "<script>" not in page  # nothing the CSP would block
    assert by_id(page, "order-status") == "pending"
    left = int(re.search(r'data-expires-in="(\d+)"', page).group(1))  # type: ignore[union-attr]
    assert 590 <= left <= 600 and re.fullmatch(r"(9|10):\d\d", by_id(page, "order-time-left"))
    assert f'data-order-status-url="{path}/status"' in page and 'data-poll-ms="' in page

    status_path = path + "/status"
    first = payer.get(status_path)
    assert first.headers["content-type"] == "application/json"
    assert first.json()["status"] == first.json()["status_text"] == "pending"
    assert 0 < first.json()["expires_in"] <= 600

    assert stranger.get(path).status_code == 404  # another account's order: the same 404 as none at all
    assert stranger.get(status_path).status_code == 404
    assert ConsoleClient(gw.url).get(status_path).headers["location"].startswith("/console/login?")

    texts = ["pending"]

    def status_is(wanted: str) -> bool:
        now = payer.get(status_path).json()
        if texts[-1] != now["status_text"]:
            texts.append(now["status_text"])
        return now["status_text"] == wanted

    paid = token.transfer(token.deployer, address, 12_500_000)
    wait_for(lambda: status_is(f"confirming 1/{CONFIRMATIONS}"), 20, "the order to see its payment")
    chain.mine(1)
    wait_for(lambda: status_is(f"confirming 2/{CONFIRMATIONS}"), 20, "a second confirmation")
    chain.mine(1)
    wait_for(lambda: status_is("credited"), 20, "the order to be credited")
    # each status seen once, in order; 3/3 may show for a moment before the same pass credits the deposit
    assert texts in (["pending", "confirming 1/3", "confirming 2/3", "credited"],
                     ["pending", "confirming 1/3", "confirming 2/3", "confirming 3/3", "credited"]), texts
    assert payer.get(status_path).json()["expires_in"] == 0

    done = payer.get(path).text
    assert by_id(done, "order-status") == "credited" and "data-order-status-url" not in done  # nothing to follow

    records = payer.get("/console/recharge").text
    row = re.search(rf'<tr data-deposit-id="(\d+)">.*?</tr>', records, re.S)
    assert row, records
    assert by_id(row.group(0), f"tx-{row.group(1)}") == paid.hash
    assert f'data-copy="tx-{row.group(1)}"' in row.group(0)
    cells = [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)]
    assert cells[3:8] == ["12.5", "$12.50", "credited", f"{CONFIRMATIONS}/{CONFIRMATIONS}", f"#{order_id}"]
    assert re.search(rf'data-order-id="{order_id}">(?:(?!</tr>).)*>credited<', records, re.S)
    assert by_id(records, "available") == "$12.50"
    assert by_id(payer.get("/console/dashboard").text, "available") == "$12.50"
    assert paid.hash not in stranger.get("/console/recharge").text


@pytest.mark.parametrize(("chain_name", "amount", "message"), [
    ("local", "abc", "Amount: not an amount"),
    ("local", "", "Amount: not an amount"),
    ("local", "-3", "Amount: an amount must be a positive number"),
    ("local", "0.0000001", "Amount: at most 6 decimals"),
    ("local", "0.5", "The smallest recharge is 1.00 USD"),
    ("mars", "5", "Chain must be one of: local"),
])
def test_bad_input_shows_the_form_again_with_the_reason_and_creates_nothing(
        payer: ConsoleClient, chain_name: str, amount: str, message: str) -> None:
    before = order_ids(payer)
    refused = payer.post("/console/recharge/orders", {"chain": chain_name, "amount": amount})
    assert refused.status_code == 400
    assert by_id(refused.text, "recharge-problem").startswith(message), refused.text
    assert f'value="{html.escape(amount)}"' in refused.text  # what was typed stays in the form
    assert order_ids(payer) == before


def test_an_order_needs_the_form_token_and_a_real_id(payer: ConsoleClient) -> None:
    before = order_ids(payer)
    assert payer.post("/console/recharge/orders", {"chain": "local", "amount": "5"}, csrf=False).status_code == 403
    assert order_ids(payer) == before
    for missing in ("999999", "abc", "99999999999999999999999", "-1"):
        assert payer.get(f"/console/recharge/orders/{missing}").status_code == 404
        assert payer.get(f"/console/recharge/orders/{missing}/status").status_code == 404


def no_chain_config(log_path: Path) -> str:
    return base_config(log_path) + demo_provider() + '[models.demo-echo]\nprovider = "demo"\nupstream_model = "echo"\n' \
        'price = { input = "1", output = "1" }\n'


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("console-no-chain"), no_chain_config, {}, "house", "0",
                             ("Traceback",))


def test_without_a_chain_the_page_says_recharge_is_not_set_up(bare: GatewayProcess) -> None:
    visitor = ConsoleClient(bare.url)
    visitor.sign_up("nochain@example.com")
    page = visitor.get("/console/recharge")
    assert page.status_code == 200
    assert "has not set up a chain" in by_id(page.text, "no-chains")
    assert "<select" not in page.text and "No recharge order yet." in page.text
    refused = visitor.post("/console/recharge/orders", {"chain": "local", "amount": "5"})
    assert refused.status_code == 400 and "none is configured" in by_id(refused.text, "recharge-problem")


@pytest.fixture(scope="module")
def with_fee(chain: Chain, token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def config(log: Path) -> str:
        text = recharge_config(chain.url, token, chain.block_number(), log)
        return text.replace('[recharge]\n', '[recharge]\nfee = 0.01\nusd_per_usdt = 0.99\n', 1)

    yield from serve_gateway(tmp_path_factory.mktemp("console-fee"), config, {}, "house", "0", ("Traceback",))


def test_the_terms_read_as_sentences_with_a_rate_and_a_fee(with_fee: GatewayProcess) -> None:
    visitor = ConsoleClient(with_fee.url)
    visitor.sign_up("fee@example.com")
    page = visitor.get("/console/recharge").text
    terms = " ".join(page.split("The smallest recharge", 1)[1].split("</p>", 1)[0].split())
    assert terms == ("credits $1.00. 1 USDT credits $0.99. A fee of 1% is kept from each deposit. The order gives you "
                     "an address and the exact amount to send; your wallet is credited once the chain has confirmed "
                     "the transfer."), terms
    assert "deposit.The" not in page and "$0.99.A fee" not in page

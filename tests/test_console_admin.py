"""The console's Admin pages over HTTP (core/console/admin_pages.py): only an operator sees them; a credit or an
adjustment with a reason lands in the ledger (the same entry the CLI shows); refused changes change nothing; open
holds, deposits waiting for an operator, and each upstream provider's requests and failures."""

from __future__ import annotations

import html
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for
from tests.console_client import PASSWORD, ConsoleClient

OPERATOR = "op@example.com"
USER = "user@example.com"
FUNDED = "admin-funded"
ADMIN_PAGES = ("/console/admin", "/console/admin/holds", "/console/admin/deposits", "/console/admin/upstreams")
REFUSING = ('format = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'  # nothing listens on port 9
            'timeouts = { connect = 1, first_byte = 1, idle = 1, total = 5 }\n')


def gateway_config(log_path: Path) -> str:
    """Two demo providers (the second streams a chunk every half second), one that refuses every connection with a
    model, and one more with no model (no traffic ever)."""
    slow = demo_provider(chunk_delay=0.5).replace("[providers.demo]", "[providers.demo-slow]")
    models = "".join(f'\n[models.{name}]\nprovider = "{provider}"\nupstream_model = "echo"\nmax_output_tokens = 64\n'
                     f'price = {{ input = "0.50", output = "1.50" }}\n' for name, provider in
                     (("demo-echo", "demo"), ("demo-slow", "demo-slow")))
    return (base_config(log_path) + demo_provider() + slow + models + f"\n[providers.nowhere]\n{REFUSING}"
            f"\n[providers.spare]\n{REFUSING}" + '\n[models.unreachable]\nprovider = "nowhere"\nupstream_model = "x"\n'
            'price = { input = "1", output = "2" }\n')


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("console-admin"), gateway_config, {}, FUNDED, "50",
                             ("Traceback",))


@pytest.fixture(scope="module")
def operator(gw: GatewayProcess) -> ConsoleClient:
    cli(gw.config, "users", "create", OPERATOR, "--operator", env={**gw.env, "TOKENTOLL_PASSWORD": PASSWORD})
    visitor = ConsoleClient(gw.url)
    assert visitor.log_in(OPERATOR).status_code == 303
    return visitor


@pytest.fixture(scope="module")
def user(gw: GatewayProcess) -> ConsoleClient:
    visitor = ConsoleClient(gw.url)
    visitor.sign_up(USER)
    return visitor


@pytest.fixture(scope="module")
def user_account(gw: GatewayProcess, user: ConsoleClient) -> int:
    return int(books(gw, USER)["id"])


def books(gw: GatewayProcess, account: str | int) -> dict[str, Any]:
    """An account's wallet and ledger as the database holds them (read-only; quicker than the CLI)."""
    db = sqlite3.connect(f"file:{gw.config.parent / 'tokentoll.db'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        found = db.execute("SELECT id, name, balance, held FROM accounts WHERE id = ? OR name = ?",
                           (account, str(account))).fetchone()
        assert found is not None, f"no account {account}"
        ledger = db.execute("SELECT id, kind, balance_delta, note FROM ledger WHERE account_id = ? ORDER BY id DESC",
                            (found["id"],)).fetchall()
        return {**dict(found), "ledger": [tuple(e) for e in ledger]}
    finally:
        db.close()


def history(gw: GatewayProcess, account: str | int) -> list[dict[str, Any]]:
    return cli(gw.config, "wallet", "history", str(account), env=gw.env)


def by_id(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert found, f"no element #{element_id} on the page"
    return found.group(1).strip()


def row(page: str, attribute: str, value: str | int) -> str | None:
    """The HTML of the table row marked data-<attribute>="<value>", or None."""
    found = re.search(rf'<tr[^>]*data-{attribute}="{value}"[^>]*>(.*?)</tr>', page, re.S)
    return found.group(1) if found else None


def cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)]


def test_a_user_gets_the_same_404_as_a_missing_page_on_every_admin_page_and_post(
        gw: GatewayProcess, user: ConsoleClient, user_account: int) -> None:
    missing = user.get("/console/no-such-page")
    assert missing.status_code == 404
    for path in (*ADMIN_PAGES, f"/console/admin/accounts/{user_account}"):
        answer = user.get(path)
        assert (answer.status_code, answer.text) == (404, missing.text), path
    for path in (f"/console/admin/accounts/{user_account}/credit", f"/console/admin/accounts/{user_account}/adjust",
                 "/console/admin/deposits/1/credit"):
        answer = user.post(path, {"amount": "100", "note": "free money"})
        assert (answer.status_code, answer.text) == (404, missing.text), path
    assert books(gw, user_account) == {"id": user_account, "name": USER, "balance": 0, "held": 0, "ledger": []}
    assert 'href="/console/admin"' not in user.get("/console/dashboard").text
    assert ConsoleClient(gw.url).get("/console/admin").status_code == 303  # logged out: to the log-in page


def test_the_overview_lists_accounts_with_their_log_ins_and_wallets(
        gw: GatewayProcess, operator: ConsoleClient, user_account: int) -> None:
    page = operator.get("/console/admin")
    assert page.status_code == 200
    assert 'aria-current="page">Accounts' in page.text
    funded = row(page.text, "account-id", books(gw, FUNDED)["id"])
    assert funded is not None and cells(funded)[3:6] == ["$50.00", "$0.00", "$50.00"]
    users = row(page.text, "account-id", user_account)
    assert users is not None and f'href="/console/admin/accounts/{user_account}"' in users and USER in cells(users)[2]
    op_row = row(page.text, "account-id", books(gw, OPERATOR)["id"])
    assert op_row is not None and cells(op_row)[2] == f"{OPERATOR} operator"


def test_an_operator_adjusts_a_balance_and_the_ledger_shows_it(
        gw: GatewayProcess, operator: ConsoleClient, user_account: int) -> None:
    page_path = f"/console/admin/accounts/{user_account}"
    operator.get(page_path)
    credited = operator.post(page_path + "/credit", {"amount": "10", "note": "paid by bank transfer"})
    assert (credited.status_code, credited.headers["location"]) == (303, page_path)
    reason = "refund <double charge> & fee"
    adjusted = operator.post(page_path + "/adjust", {"amount": "-2.5", "note": reason})
    assert (adjusted.status_code, adjusted.headers["location"]) == (303, page_path)

    page = operator.get(page_path).text
    assert by_id(page, "balance") == "$7.50"
    assert "The balance of user@example.com is now 7.50 USD." in page  # the note of the change, once
    entries = history(gw, user_account)  # the CLI's view of the same ledger
    assert [(e["kind"], e["balance_delta"], e["note"]) for e in entries] == [
        ("adjustment", -2_500_000_000, reason), ("credit", 10_000_000_000, "paid by bank transfer")]
    newest = re.search(r'<tr class="kind-(\w+)" data-entry-id="(\d+)">(.*?)</tr>', page, re.S)
    assert newest and (newest.group(1), int(newest.group(2))) == ("adjustment", entries[0]["id"])
    assert html.escape(reason, quote=False) in newest.group(3)
    assert cells(newest.group(3))[1:3] == ["adjustment", "-2.50"]
    assert "The balance of" not in operator.get(page_path).text  # the note was shown once


@pytest.mark.parametrize("action,form,message", [
    ("adjust", {"amount": "1.00", "note": ""}, "Give a reason"),
    ("adjust", {"amount": "1.00", "note": "   "}, "Give a reason"),
    ("adjust", {"amount": "", "note": "a reason"}, "Give an amount"),
    ("adjust", {"amount": "ten", "note": "a reason"}, "is not a USD amount"),
    ("adjust", {"amount": "0.0000000001", "note": "a reason"}, "at most 9 decimals"),
    ("adjust", {"amount": "-1000", "note": "a reason"}, "below zero"),
    ("credit", {"amount": "-5", "note": "a reason"}, "positive amount"),
    ("credit", {"amount": "NaN", "note": "a reason"}, "is not a USD amount"),
    ("credit", {"amount": "5", "note": ""}, "Give a reason"),
])
def test_a_refused_change_is_a_400_with_a_message_and_changes_nothing(
        gw: GatewayProcess, operator: ConsoleClient, user_account: int, action: str, form: dict[str, str],
        message: str) -> None:
    before = books(gw, user_account)
    page_path = f"/console/admin/accounts/{user_account}"
    operator.get(page_path)
    answer = operator.post(f"{page_path}/{action}", form)
    assert answer.status_code == 400
    assert message in html.unescape(by_id(answer.text, "problem"))
    assert f'value="{html.escape(form["amount"])}"' in answer.text  # what was typed is kept in the form
    assert books(gw, user_account) == before


def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(
        gw: GatewayProcess, operator: ConsoleClient, user_account: int) -> None:
    before = books(gw, user_account)
    path = f"/console/admin/accounts/{user_account}/credit"
    assert operator.post(path, {"amount": "5", "note": "forged"}, csrf=False).status_code == 403
    assert operator.post(path, {"amount": "5", "note": "forged", "csrf_token": "x" * 40}, csrf=False).status_code == 403
    assert books(gw, user_account) == before


def test_an_account_that_does_not_exist_is_a_404(operator: ConsoleClient) -> None:
    assert operator.get("/console/admin/accounts/987654").status_code == 404
    assert operator.post("/console/admin/accounts/987654/adjust", {"amount": "1", "note": "x"}).status_code == 404


def test_an_open_hold_is_listed_while_its_stream_is_in_flight(gw: GatewayProcess, operator: ConsoleClient) -> None:
    key = cli(gw.config, "keys", "create", "--account", FUNDED, "--name", "holds", env=gw.env)["key"]
    words = " ".join(f"word{i}" for i in range(30))  # 30 chunks, half a second apart
    body = {"model": "demo-slow", "stream": True, "messages": [{"role": "user", "content": words}]}
    stream = requests.post(gw.base_url + "/chat/completions", stream=True, timeout=30,
                           headers={"authorization": f"Bearer {key}"}, json=body)
    try:
        assert stream.status_code == 200
        request_id = stream.headers["x-request-id"]
        page = operator.get("/console/admin/holds").text
        hold = row(page, "request-id", request_id)
        assert hold is not None, "the hold of the stream in flight is not listed"
        age, account, model, amount = cells(hold)[:4]
        assert (account, model) == (FUNDED, "demo-slow")
        assert re.fullmatch(r"\d+ s", age) and amount.startswith("$") and amount != "$0.00"
        assert 'aria-current="page">Open holds' in page
    finally:
        stream.close()
    wait_for(lambda: row(operator.get("/console/admin/holds").text, "request-id", request_id) is None, 15,
             "the hold to close once the client left")


def test_a_held_deposit_is_credited_by_an_operator_with_a_reason(
        gw: GatewayProcess, operator: ConsoleClient, user_account: int) -> None:
    db = sqlite3.connect(gw.config.parent / "tokentoll.db", timeout=10)
    with db:
        for tx, status, credit in (("0xaa", "held", 3 * 10**9), ("0xbb", "credited", 20 * 10**9)):
            db.execute("INSERT INTO deposits (chain, tx_hash, log_index, account_id, address, amount_raw, credit, "
                       "block_number, block_hash, status, order_id, seen_at) VALUES ('local', ?, 0, ?, ?, ?, ?, 7, "
                       "'0xblock', ?, NULL, ?)", (tx, user_account, "0x" + "11" * 20, str(credit // 1000), credit,
                                                  status, time.time()))
    held_id, credited_id = (r[0] for r in db.execute("SELECT id FROM deposits ORDER BY tx_hash"))
    db.close()
    before = books(gw, user_account)["balance"]

    page = operator.get("/console/admin/deposits").text
    waiting = row(page.split('id="held-deposits"')[1].split("</table>")[0], "deposit-id", held_id)
    assert waiting is not None and "Credit $3.00" in waiting
    unmatched = page.split('id="unmatched-deposits"')[1].split("</table>")[0]
    assert row(unmatched, "deposit-id", credited_id) is not None and row(unmatched, "deposit-id", held_id) is None

    refused = operator.post(f"/console/admin/deposits/{held_id}/credit", {"note": ""})
    assert refused.status_code == 400 and "Give a reason" in by_id(refused.text, "problem")
    assert books(gw, user_account)["balance"] == before

    done = operator.post(f"/console/admin/deposits/{held_id}/credit", {"note": "below the minimum, credited anyway"})
    assert (done.status_code, done.headers["location"]) == (303, "/console/admin/deposits")
    page = operator.get("/console/admin/deposits").text
    assert f"Deposit {held_id} credited: 3.00 USD." in page
    assert 'id="no-held"' in page and row(page, "deposit-id", held_id) is not None  # now among the unmatched
    assert books(gw, user_account)["balance"] == before + 3 * 10**9
    assert "below the minimum, credited anyway" in books(gw, user_account)["ledger"][0][3]

    again = operator.post(f"/console/admin/deposits/{held_id}/credit", {"note": "twice?"})
    assert again.status_code == 400 and "cannot be credited" in by_id(again.text, "problem")
    assert books(gw, user_account)["balance"] == before + 3 * 10**9


def test_the_upstreams_page_counts_requests_and_failures_per_provider(
        gw: GatewayProcess, operator: ConsoleClient) -> None:
    key = cli(gw.config, "keys", "create", "--account", FUNDED, "--name", "upstreams", env=gw.env)["key"]
    headers = {"authorization": f"Bearer {key}"}
    for model, status in (("demo-echo", 200), ("demo-echo", 200), ("demo-echo", 200), ("unreachable", 502)):
        answer = requests.post(gw.base_url + "/chat/completions", headers=headers, timeout=30,
                               json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == status, answer.text

    def figures() -> dict[str, list[str]] | None:
        page = operator.get("/console/admin/upstreams").text
        found = {p: cells(row(page, "provider", p) or "") for p in ("demo", "nowhere", "spare")}
        return found if found["demo"][1] == "3" and found["nowhere"][2] == "1" else None

    shown = wait_for(figures, 20, "the workers' flush of the upstream tallies (every 10 s)")
    assert shown["demo"][1:7] == ["3", "0", "0.0%", "3", "0", "0.0%"]
    assert shown["nowhere"][1:7] == ["1", "1", "100.0%", "1", "1", "100.0%"]
    assert shown["spare"][1:8] == ["0", "0", "-", "0", "0", "-", "none in the last hour"]  # configured, no traffic
    page = operator.get("/console/admin/upstreams").text
    assert 'class="num rate bad"' in row(page, "provider", "nowhere")
    assert page.index('data-provider="nowhere"') < page.index('data-provider="demo"')  # the failing first

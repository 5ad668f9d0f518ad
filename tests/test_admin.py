"""The admin HTTP API: the operator's operations over HTTP behind a hashed admin token."""

from __future__ import annotations

import re

import httpx2 as httpx
import openai

from tests.conftest import GatewayProcess, cli, on_one_utc_day, wait_for

MSG = [{"role": "user", "content": "hello admin"}]


def admin_token(gateway: GatewayProcess) -> str:
    wait_for(lambda: httpx.get(gateway.url + "/readyz").status_code == 200, 10, "the gateway to be ready")
    found = re.findall(r"tt-admin-[A-Za-z0-9]{40}", "".join(gateway.stderr_lines))
    assert len(found) == 1, "the generated admin token is printed exactly once"
    return found[0]


def test_admin_api_end_to_end(gateway: GatewayProcess) -> None:
    token = admin_token(gateway)
    api = httpx.Client(base_url=gateway.url + "/admin", headers={"authorization": f"Bearer {token}"})
    assert httpx.get(gateway.url + "/admin/accounts").status_code == 401
    assert httpx.get(gateway.url + "/admin/accounts", headers={"authorization": "Bearer nope"}).status_code == 401
    r = api.post("/accounts", json={"name": "via-api", "credit": "2.5"})
    assert r.status_code == 201 and r.json()["balance_usd"] == "2.500000000"
    key = api.post("/keys", json={"account": "via-api", "name": "k1", "monthly_limit": "1", "models": ["mock-ok"]})
    assert key.status_code == 201
    plaintext, key_id = key.json()["key"], key.json()["id"]
    assert key.json()["models"] == ["mock-ok"] and key.json()["monthly_limit_usd"] == "1.000000000"
    listed = api.get("/keys", params={"account": "via-api"}).json()
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0] and "hash" not in listed[0]
    client = openai.OpenAI(base_url=gateway.base_url, api_key=plaintext, max_retries=0)
    with on_one_utc_day():  # usage without a month is this month's
        client.chat.completions.create(model="mock-ok", messages=MSG)
        usage = api.get("/usage", params={"account": "via-api"}).json()
        assert usage[0]["requests"] == 1 and usage[0]["cost"] > 0
    history = api.get("/wallets/via-api/history").json()
    assert [e["kind"] for e in history][:2] == ["settle", "hold"]
    assert history[0]["held_delta"] == -history[1]["held_delta"]  # the settle closes the whole hold
    assert api.post("/wallets/via-api/credit", json={"usd": "1"}).json()["balance"] > 3_000_000_000 - usage[0]["cost"] - 1
    assert api.post("/wallets/via-api/credit", json={"usd": 1.5}).status_code == 400  # floats refused
    assert api.post("/wallets/via-api/adjust", json={"usd": "-999", "note": "x"}).status_code == 400
    assert api.get("/wallets/nobody").status_code == 404
    assert api.post("/accounts", content=b"{oops").status_code == 400
    rotated = api.post(f"/keys/{key_id}/rotate").json()["key"]
    assert rotated != plaintext and rotated.startswith("sk-tt-")
    assert api.patch(f"/keys/{key_id}", json={"rpm": 10, "monthly_limit": None}).json()["rpm"] == 10
    assert api.post(f"/keys/{key_id}/disable").json()["status"] == "disabled"
    assert api.get("/holds").status_code == 200
    assert api.get("/usage/req_nothing").status_code == 404
    assert cli(gateway.config, "wallet", "show", "via-api", env=gateway.env)["held"] == 0


def test_bad_amounts_are_refused_whole(gateway: GatewayProcess) -> None:
    api = httpx.Client(base_url=gateway.url + "/admin",
                       headers={"authorization": f"Bearer {admin_token(gateway)}"})
    for bad in ("-5", "Infinity", "1e30", "9223372036"):  # negative, not finite, past the cap
        r = api.post("/accounts", json={"name": f"half-{bad}", "credit": bad})
        assert r.status_code == 400, bad
        assert api.get(f"/wallets/half-{bad}").status_code == 404, "no account is left half-made"
    api.post("/accounts", json={"name": "capped-wallet", "credit": "999999999"})
    assert api.post("/wallets/capped-wallet/credit", json={"usd": "999999999"}).status_code == 400
    wallet = api.get("/wallets/capped-wallet").json()
    assert wallet["balance"] == 999_999_999 * 10**9 and isinstance(wallet["balance"], int)
    assert api.post("/accounts", json={"name": "12345"}).status_code == 400  # all digits: that is an id


def test_no_secret_character_is_stored_beyond_the_display_form(gateway: GatewayProcess) -> None:
    import sqlite3

    created = cli(gateway.config, "keys", "create", "--account", "tester", "--name", "audit", env=gateway.env)
    secret = created["key"].removeprefix("sk-tt-")
    db = sqlite3.connect(gateway.config.parent / "tokentoll.db")
    row = db.execute("SELECT * FROM api_keys WHERE id = ?", (created["id"],)).fetchone()
    db.close()
    stored = " ".join(str(v) for v in row)
    assert secret[4:-4] not in stored and secret[4:12] not in stored and secret[-12:-4] not in stored
    assert created["display"] == f"sk-tt-{secret[:4]}...{secret[-4:]}"


def test_recharge_routes_answer_and_refuse_what_is_not_configured(gateway: GatewayProcess) -> None:
    api = httpx.Client(base_url=gateway.url + "/admin",
                       headers={"authorization": f"Bearer {admin_token(gateway)}"})
    assert api.get("/recharge/deposits").json() == []  # no chain here, so no deposit
    assert api.get("/recharge/orders").json() == []
    missing = api.post("/recharge/addresses", json={"account": "tester", "chain": "ethereum"})
    assert missing.status_code == 404 and "no chain 'ethereum' is configured" in missing.json()["error"]["message"]
    assert api.post("/recharge/chains/ethereum/rescan", json={"from_block": 5}).status_code == 404
    assert api.post("/recharge/chains/ethereum/rescan", json={"from_block": "5"}).status_code == 400
    no_reason = api.post("/recharge/deposits/1/credit", json={})
    assert no_reason.status_code == 400 and "'note' is required" in no_reason.json()["error"]["message"]
    assert api.post("/recharge/deposits/999/credit", json={"note": "x"}).status_code == 400  # no such deposit

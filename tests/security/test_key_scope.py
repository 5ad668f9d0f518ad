"""Key scope (issue 17, finding 8): a model-restricted key sees and acts only on its account's videos of those models
and gets a 403 on every recharge verb; an unrestricted key keeps full access. Real servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import GatewayProcess, serve_gateway
from tests.test_tasks import ENV, account, admin, videos_config, vup  # noqa: F401 - vup: the upstream fixture
from tests.tron_stub import TronStub
from tests.videos_upstream import MP4, VideosUpstream

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated

USDT_TRC20 = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


def tron_xpub() -> str:
    """The TRON account xpub of the standard test mnemonic (as tests/test_recharge_e2e.py derives it)."""
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

    return Bip44.FromSeed(Bip39SeedGenerator("abandon " * 11 + "about").Generate(), Bip44Coins.TRON) \
        .Purpose().Coin().Account(0).PublicKey().ToExtended()


def tron_chain(rpc_url: str) -> str:
    """A [chains.tron] section on the TRON stub, so recharge orders can be made (tests/security/ shares it)."""
    return f"""
[recharge]
minimum = "1"
order_ttl = 600

[chains.tron]
kind = "tron"
rpc_url = "{rpc_url}"
contract = "{USDT_TRC20}"
xpub = "{tron_xpub()}"
confirmations = 19
poll_interval = 0.5
"""


@pytest.fixture(scope="module")
def tron() -> Iterator[TronStub]:
    stub = TronStub().start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def gw(vup: VideosUpstream, tron: TronStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def config(log_path: Path) -> str:
        return videos_config(vup.base_url, 60, 0.5, log_path) + tron_chain(tron.url)

    yield from serve_gateway(tmp_path_factory.mktemp("key-scope"), config, ENV, "videos", "1", ("Traceback",))


def key_for(gw: GatewayProcess, name: str, models: list[str]) -> str:
    made = admin(gw).post("/keys", json={"account": name, "name": "+".join(models) or "none", "models": models})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def raw(gw: GatewayProcess, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.base_url + path, headers={"authorization": f"Bearer {key}"}, timeout=20, **kwargs)


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


TASK_VERBS = [("GET", "/videos/{id}"), ("GET", "/videos/{id}/content"), ("POST", "/videos/{id}/cancel"),
              ("DELETE", "/videos/{id}")]


def assert_unseen(gw: GatewayProcess, key: str, vid: str) -> None:
    """Every verb on the task answers exactly as for a task that does not exist: the same 404, the same body but
    for the id and the request id."""
    for method, template in TASK_VERBS:
        seen, absent = (raw(gw, method, template.format(id=v), key) for v in (vid, "video_tt_nothing"))
        assert seen.status_code == absent.status_code == 404, (method, template, seen.text)
        shown, missing = seen.json()["error"], absent.json()["error"]
        assert shown["message"] == missing["message"].replace("video_tt_nothing", vid)
        assert (shown["code"], shown["type"], shown["param"]) == (missing["code"], missing["type"], missing["param"])
        assert (shown["code"], shown["param"]) == ("not_found", "video_id")


def test_a_model_restricted_key_sees_only_the_tasks_of_its_models(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, full = account(gw)
    sec_key = key_for(gw, name, ["video-sec"])
    restricted = sdk(gw, sec_key)
    # create: a restricted key may only submit its models (checked at admission, as before)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        restricted.videos.create(model="video-task", prompt="scope: not mine to make")
    assert refused.value.code == "model_not_allowed"
    own = restricted.videos.create(model="video-sec", prompt="scope: own")
    by_full_sec = full.videos.create(model="video-sec", prompt="scope: full sec")
    done = full.videos.create(model="video-task", prompt="scope: done task")
    running = full.videos.create(model="video-task", prompt="scope: running task")
    vup.complete(vup.by_prompt("scope: done task"))
    assert full.videos.retrieve(done.id).status == "completed"

    # list: filtered for the restricted key, everything for the unrestricted one
    assert {v.id for v in restricted.videos.list()} == {own.id, by_full_sec.id}
    assert {v.id for v in full.videos.list()} == {own.id, by_full_sec.id, done.id, running.id}
    hidden_after = raw(gw, "GET", f"/videos?after={running.id}", sec_key)
    missing_after = raw(gw, "GET", "/videos?after=video_tt_nothing", sec_key)
    assert hidden_after.status_code == missing_after.status_code == 400
    assert hidden_after.json()["error"]["message"] == \
        missing_after.json()["error"]["message"].replace("video_tt_nothing", running.id)

    # retrieve, content, cancel, delete of another model's tasks: the 404 of a task that does not exist
    for vid in (done.id, running.id):
        assert_unseen(gw, sec_key, vid)
    assert full.videos.retrieve(running.id).status == "queued"  # the refused cancel and delete changed nothing
    assert full.videos.download_content(done.id).content == MP4
    assert vup.by_prompt("scope: running task") not in vup.deleted

    # its own model's tasks, whichever key of the account made them: every verb works
    assert restricted.videos.retrieve(by_full_sec.id).id == by_full_sec.id
    vup.complete(vup.by_prompt("scope: full sec"))
    assert restricted.videos.download_content(by_full_sec.id).content == MP4
    cancelled = restricted.post(f"/videos/{own.id}/cancel", cast_to=openai.types.Video)
    assert cancelled.error is not None and cancelled.error.code == "video_cancelled"
    assert restricted.videos.delete(by_full_sec.id).deleted
    assert restricted.videos.delete(own.id).deleted

    # the unrestricted key acts on every task of the account
    assert full.post(f"/videos/{running.id}/cancel", cast_to=openai.types.Video).error.code == "video_cancelled"
    assert full.videos.delete(running.id).deleted and full.videos.delete(done.id).deleted
    assert [v.id for v in full.videos.list()] == []

    # any other verb is unknown for every key
    for key in (sec_key, full.api_key):
        assert raw(gw, "POST", f"/videos/{own.id}/remix", key, json={"prompt": "x"}).status_code == 404


def test_access_follows_the_models_not_the_key_that_made_the_task(gw: GatewayProcess, vup: VideosUpstream) -> None:
    """A second key with the same models, and the first key after a rotation, keep access; a key of other
    models, and a key allowed no model at all, see nothing."""
    name, full = account(gw)
    first = key_for(gw, name, ["video-sec"])
    made = sdk(gw, first).videos.create(model="video-sec", prompt="scope: rotation")
    second = key_for(gw, name, ["video-sec", "chat-only"])
    assert sdk(gw, second).videos.retrieve(made.id).id == made.id
    key_id = next(k["id"] for k in admin(gw).get("/keys", params={"account": name}).json() if k["name"] == "video-sec")
    rotated = admin(gw).post(f"/keys/{key_id}/rotate").json()["key"]
    assert sdk(gw, rotated).videos.retrieve(made.id).id == made.id
    assert [v.id for v in sdk(gw, rotated).videos.list()] == [made.id]
    for other in (key_for(gw, name, ["video-task"]), key_for(gw, name, [])):
        assert [v.id for v in sdk(gw, other).videos.list()] == []
        assert_unseen(gw, other, made.id)
    full.videos.delete(made.id)


def test_recharge_needs_a_key_without_a_model_restriction(gw: GatewayProcess) -> None:
    name, full = account(gw)
    restricted = key_for(gw, name, ["video-sec"])
    unrestricted = str(full.api_key)
    made = raw(gw, "POST", "/recharge/orders", unrestricted, json={"chain": "tron", "amount": "5"})
    assert made.status_code == 201, made.text
    order = made.json()
    verbs = [("POST", "/recharge/orders", {"json": {"chain": "tron", "amount": "7"}}),
             ("GET", "/recharge/orders", {}), ("GET", f"/recharge/orders/{order['id']}", {}),
             ("GET", "/recharge/orders/999999", {}), ("GET", "/recharge/deposits", {})]
    for method, path, kwargs in verbs:
        refused = raw(gw, method, path, restricted, **kwargs)
        assert refused.status_code == 403, (method, path, refused.text)
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("permission_error", "api_key_restricted"), error
        assert "no model restriction" in error["message"] and "console" in error["message"]
        assert order["address"] not in refused.text
    listed = raw(gw, "GET", "/recharge/orders", unrestricted).json()["data"]
    assert [o["id"] for o in listed] == [order["id"]]  # the refused POST made no order
    assert raw(gw, "GET", f"/recharge/orders/{order['id']}", unrestricted).json()["status"] == "pending"
    assert raw(gw, "GET", "/recharge/deposits", unrestricted).status_code == 200
    again = raw(gw, "POST", "/recharge/orders", unrestricted, json={"chain": "tron", "amount": "7"})
    assert again.status_code == 201 and again.json()["amount"] == "7"

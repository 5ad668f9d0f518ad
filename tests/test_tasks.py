"""Video tasks: the openai SDK against a real gateway and a mock /v1/videos upstream (complete, fail, cancel, expire,
restart: the wallet exactly right, no hold open; others get 404), and the store-level races settle once."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from billing import store
from billing.keys import check_presented, new_key
from billing.ledger import Ledger
from billing.store import tasks as task_store
from billing.tasks import TaskBook, TaskPoller
from tests.conftest import GatewayProcess, base_config, cli, serve_gateway, wait_for
from tests.videos_upstream import MP4, UPSTREAM_KEY, VideosUpstream

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated
ADMIN = "tt-admin-" + "t" * 40
USD = 1_000_000_000
_names = itertools.count(1)


def videos_config(upstream_url: str, ttl: float, poll: float, log_path: Path) -> str:
    return f"""
{base_config(log_path, max_body_bytes=65536)}
[tasks]
ttl = {ttl}
poll_interval = {poll}

[providers.vmock]
base_url = "{upstream_url}/v1"
api_key_env = "TT_VIDEOS_KEY"
timeouts = {{ connect = 2, first_byte = 5, idle = 5, total = 20 }}

[providers.demo]
builtin = "demo"

[models.video-sec]
provider = "vmock"
upstream_model = "sora-2"
price = {{ input = "0", output = "0", second = "0.10" }}

[models.video-task]
provider = "vmock"
upstream_model = "sora-2-pro"
price = {{ input = "0", output = "0", task = "0.50" }}

[models.video-500]
provider = "vmock"
upstream_model = "video-500"
price = {{ input = "0", output = "0", second = "0.10" }}

[models.video-400]
provider = "vmock"
upstream_model = "video-400"
price = {{ input = "0", output = "0", second = "0.10" }}

[models.chat-only]
provider = "vmock"
price = {{ input = "1", output = "2" }}

[models.demo-video]
provider = "demo"
upstream_model = "sora-2"
max_output_tokens = 1
price = {{ input = "0", output = "0", second = "0.10" }}
"""


ENV = {"TT_VIDEOS_KEY": UPSTREAM_KEY, "TOKENTOLL_ADMIN_TOKEN": ADMIN}


@pytest.fixture(scope="module")
def vup() -> Iterator[VideosUpstream]:
    server = VideosUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(vup: VideosUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("videos"), partial(videos_config, vup.base_url, 60, 0.5),
                             ENV, "videos", "1", ("Traceback",))


def admin(gw: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gw.url + "/admin", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


def account(gw: GatewayProcess, usd: str = "10") -> tuple[str, openai.OpenAI]:
    """A fresh account with `usd` and a client with its key."""
    name = f"acct{next(_names)}"
    api = admin(gw)
    assert api.post("/accounts", json={"name": name, "credit": usd}).status_code == 201
    key = api.post("/keys", json={"account": name}).json()["key"]
    return name, openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def wallet(gw: GatewayProcess, name: str) -> tuple[int, int]:
    w = admin(gw).get(f"/wallets/{name}").json()
    return w["balance"], w["held"]


def open_holds(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    account_id = admin(gw).get(f"/wallets/{name}").json()["id"]
    return [h for h in admin(gw).get("/holds").json() if h["account_id"] == account_id]


def settled(gw: GatewayProcess, name: str, balance: int) -> bool:
    return wallet(gw, name) == (balance, 0) and not open_holds(gw, name)


# -- the lifecycle through the SDK ----------------------------------------------------------------------


def test_completed_video_is_charged_for_the_seconds_made(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    video = client.videos.create(model="video-sec", prompt="complete me", seconds="8", size="1280x720",
                                 input_reference=("ref.png", b"\x89PNG-ref", "image/png"))
    assert video.id.startswith("video_tt_") and video.model == "video-sec" and video.status == "queued"
    assert wallet(gw, name) == (10 * USD, 8 * USD // 10)  # 8 s x $0.10 held
    upstream_id = vup.by_prompt("complete me")
    sent = vup.created[-1]
    assert sent["content_type"] == "multipart/form-data" and sent["auth"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["fields"]["model"] == "sora-2" and sent["fields"]["seconds"] == "8"
    assert sent["fields"]["input_reference"] == {"filename": "ref.png", "bytes": b"\x89PNG-ref"}
    vup.progress(upstream_id, 50)
    seen = client.videos.retrieve(video.id)
    assert (seen.status, seen.progress, seen.id) == ("in_progress", 50, video.id)
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.download_content(video.id)
    assert err.value.code == "video_not_ready"
    vup.complete(upstream_id, seconds="4")  # it made 4 of the 8 seconds asked for
    done = client.videos.retrieve(video.id)
    assert (done.status, done.model, done.id) == ("completed", "video-sec", video.id)
    assert upstream_id not in done.model_dump_json()
    assert settled(gw, name, 10 * USD - 4 * USD // 10)
    assert cli(gw.config, "wallet", "show", name, env=gw.env)["held"] == 0
    with client.videos.with_streaming_response.download_content(video.id) as resp:
        assert resp.headers["content-type"] == "video/mp4"
        chunks = list(resp.iter_bytes())
    assert b"".join(chunks) == MP4 and b"".join(chunks)[4:8] == b"ftyp"
    assert client.videos.download_content(video.id, variant="thumbnail").content.startswith(b"RIFF")
    assert client.videos.retrieve(video.id).status == "completed"  # asked again: charged once
    assert wallet(gw, name) == (10 * USD - 4 * USD // 10, 0)
    # one log line says it ended and what it cost: the retrieve's, or the poller's if it got there first
    ended = [e for e in gw.log_entries() if e.get("task_id") == video.id and e.get("task_status") == "completed"]
    assert len(ended) == 1 and ended[0]["cost_nanousd"] == 4 * USD // 10
    assert "complete me" not in gw.log_path.read_text()


def test_the_poller_settles_a_task_nobody_polls(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    video = client.videos.create(model="video-task", prompt="poll me not")  # JSON-less: the SDK's multipart
    assert wallet(gw, name) == (10 * USD, USD // 2)
    vup.complete(vup.by_prompt("poll me not"))
    wait_for(lambda: settled(gw, name, 10 * USD - USD // 2), 10, "the poller to settle the task")
    assert client.videos.retrieve(video.id).status == "completed"
    assert wallet(gw, name) == (10 * USD - USD // 2, 0)


def test_failed_video_is_released(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    video = client.videos.create(model="video-sec", prompt="fail me", seconds="12")
    assert wallet(gw, name) == (10 * USD, 12 * USD // 10)
    vup.fail(vup.by_prompt("fail me"))
    failed = client.videos.retrieve(video.id)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "moderation_blocked"
    assert settled(gw, name, 10 * USD)
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.download_content(video.id)
    assert err.value.code == "video_not_available"


def test_cancel_by_delete_and_by_post(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    first = client.videos.create(model="video-sec", prompt="delete me")
    second = client.videos.create(model="video-sec", prompt="cancel me", seconds="8")
    assert wallet(gw, name) == (10 * USD, 12 * USD // 10)
    first_up = vup.by_prompt("delete me")
    gone = client.videos.delete(first.id)
    assert (gone.id, gone.deleted, gone.object) == (first.id, True, "video.deleted")
    assert first_up in vup.deleted  # the upstream was told to drop it
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(first.id)
    second_up = vup.by_prompt("cancel me")
    cancelled = client.post(f"/videos/{second.id}/cancel", cast_to=openai.types.Video)
    assert cancelled.status == "failed" and cancelled.error is not None and cancelled.error.code == "video_cancelled"
    assert settled(gw, name, 10 * USD)
    with vup.lock:  # the upstream finishes it anyway
        vup.videos[second_up] = {"id": second_up, "object": "video", "model": "sora-2", "status": "completed",
                                 "progress": 100, "created_at": 1, "seconds": "8", "size": "720x1280"}
    again = client.videos.retrieve(second.id)
    assert again.status == "failed" and again.error is not None and again.error.code == "video_cancelled"
    assert client.post(f"/videos/{second.id}/cancel", cast_to=openai.types.Video).error.code == "video_cancelled"
    assert settled(gw, name, 10 * USD)
    client.videos.delete(second.id)
    assert settled(gw, name, 10 * USD)


def test_a_cancel_after_the_upstream_finished_is_charged(gw: GatewayProcess, vup: VideosUpstream) -> None:
    """The upstream finished the video before the cancel (or the DELETE) arrived: it is settled as completed and
    charged; a cancel of it is a 400, a DELETE deletes it (charged)."""
    name, client = account(gw)
    video = client.videos.create(model="video-sec", prompt="finish then cancel", seconds="8")
    vup.complete(vup.by_prompt("finish then cancel"))
    with pytest.raises(openai.BadRequestError) as err:
        client.post(f"/videos/{video.id}/cancel", cast_to=openai.types.Video)
    assert err.value.code == "video_already_completed" and "completed" in err.value.message
    assert settled(gw, name, 10 * USD - 8 * USD // 10)
    assert client.videos.retrieve(video.id).status == "completed"
    gone = client.videos.create(model="video-task", prompt="finish then delete")
    vup.complete(vup.by_prompt("finish then delete"))
    assert client.videos.delete(gone.id).deleted
    assert settled(gw, name, 10 * USD - 8 * USD // 10 - USD // 2)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(gone.id)


def test_a_cancel_is_refused_while_the_upstream_cannot_say(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    video = client.videos.create(model="video-sec", prompt="unanswered", seconds="8")
    upstream_id = vup.by_prompt("unanswered")
    vup.unanswered.add(upstream_id)
    try:
        for call in (lambda: client.post(f"/videos/{video.id}/cancel", cast_to=openai.types.Video),
                     lambda: client.videos.delete(video.id)):
            with pytest.raises(openai.InternalServerError) as err:
                call()
            assert err.value.status_code == 502 and "not cancelled" in err.value.message
        assert wallet(gw, name) == (10 * USD, 8 * USD // 10)  # still held: the work may be done
        assert upstream_id not in vup.deleted
    finally:
        vup.unanswered.discard(upstream_id)
    cancelled = client.post(f"/videos/{video.id}/cancel", cast_to=openai.types.Video)
    assert cancelled.error is not None and cancelled.error.code == "video_cancelled"
    assert settled(gw, name, 10 * USD)


def test_a_cancel_of_a_finished_demo_video_is_charged(gw: GatewayProcess) -> None:
    import time

    from core.demo_videos import RENDER_SECONDS

    name, client = account(gw)
    video = client.videos.create(model="demo-video", prompt="a demo to cancel", seconds="12")
    t0 = time.time()  # after the demo began timing it (at its arrival)
    wait_for(lambda: time.time() > t0 + RENDER_SECONDS + 0.2, 10, "the demo to finish the video")
    with pytest.raises(openai.BadRequestError) as err:
        client.post(f"/videos/{video.id}/cancel", cast_to=openai.types.Video)
    assert err.value.code == "video_already_completed"
    assert settled(gw, name, 10 * USD - 12 * USD // 10)


def test_only_the_owner_sees_a_task(gw: GatewayProcess, vup: VideosUpstream) -> None:
    owner_name, owner = account(gw)
    _, other = account(gw)
    video = owner.videos.create(model="video-sec", prompt="mine")
    for call in (lambda: other.videos.retrieve(video.id), lambda: other.videos.download_content(video.id),
                 lambda: other.videos.delete(video.id),
                 lambda: other.post(f"/videos/{video.id}/cancel", cast_to=openai.types.Video)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "not_found" and err.value.request_id
    assert [v.id for v in other.videos.list()] == []
    assert [v.id for v in owner.videos.list()] == [video.id]
    assert owner.videos.retrieve(video.id).status == "queued"
    assert wallet(gw, owner_name) == (10 * USD, 4 * USD // 10)
    owner.videos.delete(video.id)
    assert settled(gw, owner_name, 10 * USD)


def test_list_pages_the_callers_tasks(gw: GatewayProcess, vup: VideosUpstream) -> None:
    _, client = account(gw)
    ids = [client.videos.create(model="video-task", prompt=f"list {i}").id for i in range(3)]
    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more
    assert [v.id for v in client.videos.list(limit=2)] == ids[::-1]  # the SDK follows last_id
    assert [v.id for v in client.videos.list(order="asc")] == ids
    with pytest.raises(openai.BadRequestError):
        client.videos.list(after="video_tt_not-mine")
    for vid in ids:
        client.videos.delete(vid)


def test_refused_submissions_change_nothing(gw: GatewayProcess, vup: VideosUpstream) -> None:
    name, client = account(gw)
    creates = len(vup.created)
    for kwargs, error in [({"model": "video-sec", "prompt": "x", "seconds": "5"}, openai.BadRequestError),
                          ({"model": "video-sec", "prompt": ""}, openai.BadRequestError),
                          ({"model": "no-such-model", "prompt": "x"}, openai.NotFoundError),
                          ({"model": "chat-only", "prompt": "x"}, openai.BadRequestError),
                          ({"prompt": "x"}, openai.NotFoundError)]:  # OpenAI's default, sora-2, is not served
        with pytest.raises(error):
            client.videos.create(**kwargs)
    with pytest.raises(openai.APIStatusError) as too_big:
        client.videos.create(model="video-sec", prompt="x", input_reference=("big.png", b"0" * 70_000, "image/png"))
    assert too_big.value.status_code == 413
    assert len(vup.created) == creates  # nothing reached the upstream
    with pytest.raises(openai.InternalServerError) as err:
        client.videos.create(model="video-500", prompt="x")
    assert err.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(model="video-400", prompt="x")
    assert refused.value.code == "moderation_blocked" and "moderation" in refused.value.message
    assert settled(gw, name, 10 * USD)
    assert [v.id for v in client.videos.list()] == []
    poor_name, poor = account(gw, "0.1")
    with pytest.raises(openai.APIStatusError) as short:
        poor.videos.create(model="video-sec", prompt="x", seconds="8")
    assert short.value.status_code == 402
    assert settled(gw, poor_name, USD // 10)
    raw = httpx.post(gw.base_url + "/videos/video_tt_x/remix", headers={"authorization": "Bearer nope"})
    assert raw.status_code == 404 and raw.headers["x-request-id"]


def test_demo_provider_videos(gw: GatewayProcess) -> None:
    name, client = account(gw)
    video = client.videos.create(model="demo-video", prompt="a demo", seconds="4")
    done = wait_for(lambda: (v := client.videos.retrieve(video.id)).status == "completed" and v, 10, "the demo video")
    assert done.progress == 100 and done.seconds == "4"
    content = client.videos.download_content(video.id).content
    assert content[4:8] == b"ftyp"
    assert settled(gw, name, 10 * USD - 4 * USD // 10)


# -- expiry and restarts, each on a gateway of its own --------------------------------------------------


def start_own(vup: VideosUpstream, tmp: Path, ttl: float, poll: float) -> tuple[GatewayProcess, str, openai.OpenAI]:
    log_path = tmp / "requests.log"
    config = tmp / "config.toml"
    config.write_text(videos_config(vup.base_url, ttl, poll, log_path))
    env = {**os.environ, **ENV}
    env.pop("TOKENTOLL_CONFIG", None)
    cli(config, "accounts", "create", "own", "--credit", "10", env=env)
    key = cli(config, "keys", "create", "--account", "own", env=env)["key"]
    gateway = GatewayProcess(config, log_path, env)
    return gateway, key, openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20)


def test_an_uncompleted_task_expires_and_is_released(vup: VideosUpstream, tmp_path: Path) -> None:
    gateway, _, client = start_own(vup, tmp_path, ttl=1.5, poll=0.3)
    try:
        video = client.videos.create(model="video-sec", prompt="expire me", seconds="8")
        upstream_id = vup.by_prompt("expire me")
        assert wallet(gateway, "own") == (10 * USD, 8 * USD // 10)
        wait_for(lambda: settled(gateway, "own", 10 * USD), 10, "the poller to expire the task")
        assert upstream_id in vup.deleted
        shown = client.videos.retrieve(video.id)
        assert shown.status == "failed" and shown.error is not None and shown.error.code == "video_expired"
        assert settled(gateway, "own", 10 * USD)
    finally:
        gateway.stop()


def test_a_restart_mid_task_then_the_poller_settles_it(vup: VideosUpstream, tmp_path: Path) -> None:
    gateway, key, client = start_own(vup, tmp_path, ttl=60, poll=0.3)
    video = client.videos.create(model="video-sec", prompt="outlive a restart", seconds="12")
    assert wallet(gateway, "own") == (10 * USD, 12 * USD // 10)
    gateway.stop()
    vup.complete(vup.by_prompt("outlive a restart"), seconds="12")
    again = GatewayProcess(gateway.config, gateway.log_path, gateway.env)
    try:
        wait_for(lambda: settled(again, "own", 10 * USD - 12 * USD // 10), 10, "the restarted poller to settle")
        client = openai.OpenAI(base_url=again.base_url, api_key=key, max_retries=0, timeout=20)
        assert client.videos.retrieve(video.id).status == "completed"
        assert cli(again.config, "wallet", "show", "own", env=again.env)["balance"] == 10 * USD - 12 * USD // 10
    finally:
        again.stop()
    assert "Traceback" not in "".join(again.stderr_lines)


# -- the books, at the store level ----------------------------------------------------------------------


PRICES = {"vid": (None, 100)}  # 100 nano-dollars a second


async def books(path: Path, balance: int) -> tuple[store.Store, Ledger, Any, int]:
    db = store.Store(str(path))
    await db.start()
    acct = await db.run(store.tx_create_account, "acct", 0.0, balance)
    key = new_key()
    await db.run(store.tx_create_key, acct["id"], "k", key.display, key.hash, 0.0, {})
    return db, Ledger(db, 0, 0, "owner-a"), check_presented(key.plaintext), acct["id"]


async def submit(db: store.Store, ledger: Ledger, key: Any, account_id: int, n: int, amount: int = 800) -> dict[str, Any]:
    import time

    rid = f"req_{n:025x}"
    assert not (await ledger.admit_amount(rid, key, "vid", amount, kind="task")).error
    tid = "video_tt_" + rid[4:]
    obj = orjson.dumps({"id": tid, "status": "queued", "seconds": "8"}).decode()
    assert await db.run(task_store.tx_insert_task, task_store.NewTask(
        tid, f"up{n}", account_id, None, "vid", rid, "queued", amount, obj, time.time(), time.time() + 60))
    row = await db.run(task_store.tx_task, tid, None)
    assert row is not None
    return row


async def ledger_entries(db: store.Store, account_id: int) -> list[dict[str, Any]]:
    return await db.run(store.tx_history, account_id, 1000)


def test_racing_ends_settle_once(tmp_path: Path) -> None:
    """Two workers (two stores on one file), each with a client retrieve and the poller's repair, end the same
    task at once: exactly one of them wins the compare-and-set and the hold is settled once."""
    async def scenario() -> None:
        db, ledger, key, account_id = await books(tmp_path / "db", 10_000)
        db2 = store.Store(str(tmp_path / "db"))
        await db2.start()
        book_a = TaskBook(ledger, db, PRICES.get)
        book_b = TaskBook(Ledger(db2, 0, 0, "owner-b"), db2, PRICES.get)
        for n in range(5):
            row = await submit(db, ledger, key, account_id, n)
            done = {"id": row["id"], "status": "completed", "seconds": "4"}
            ends = [book.end(row, status, done if status == "completed" else None)
                    for book in (book_a, book_b) for status in ("completed", "completed", "cancelled", "expired")]
            results = await asyncio.gather(*ends, book_a.repair(), book_b.repair())
            winners = [r for r in results[:-2] if r[0]]
            assert len(winners) == 1
            final = await db.run(task_store.tx_task, row["id"], None)
            entries = [e for e in await ledger_entries(db, account_id) if e["request_id"] == row["request_id"]]
            kinds = sorted(e["kind"] for e in entries)
            if final["status"] == "completed":
                assert kinds == ["hold", "settle"]  # 400 charged; the settle frees the whole hold (400 released)
            else:
                assert kinds == ["hold", "release"]
        acct = await db.run(store.tx_account, account_id)
        charged = sum(-e["balance_delta"] for e in await ledger_entries(db, account_id) if e["kind"] == "settle")
        assert acct["held"] == 0 and acct["balance"] == 10_000 - charged
        assert await db.run(store.tx_open_holds) == []
        await db2.close()
        await db.close()

    asyncio.run(scenario())


def test_a_crash_between_the_state_change_and_the_money_is_repaired(tmp_path: Path) -> None:
    async def scenario() -> None:
        import time

        db, ledger, key, account_id = await books(tmp_path / "db", 10_000)
        book = TaskBook(ledger, db, PRICES.get)
        row = await submit(db, ledger, key, account_id, 1)
        done = orjson.dumps({"id": row["id"], "status": "completed", "seconds": "4"}).decode()
        won, _ = await db.run(task_store.tx_end, row["id"], "completed", done, time.time())  # ...then the crash
        assert won and len(await db.run(store.tx_open_holds)) == 1
        failed = await submit(db, ledger, key, account_id, 2)
        await db.run(task_store.tx_end, failed["id"], "failed", None, time.time())  # crashed too
        assert await book.repair() == 2
        assert await book.repair() == 0  # once
        acct = await db.run(store.tx_account, account_id)
        assert (acct["balance"], acct["held"]) == (10_000 - 400, 0)
        # a hold placed just before a crash, never recorded as a task: released once old enough
        assert not (await ledger.admit_amount("req_" + "f" * 25, key, "vid", 800, kind="task")).error
        await submit(db, ledger, key, account_id, 3)  # a live task: its hold is not an orphan
        assert await book.release_orphans(older_than=3600) == 0
        assert await book.release_orphans(older_than=0) == 1
        acct = await db.run(store.tx_account, account_id)
        assert (acct["balance"], acct["held"]) == (10_000 - 400, 800)
        await db.close()

    asyncio.run(scenario())


def test_one_poller_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, ledger, _, _ = await books(tmp_path / "db", 0)
        book = TaskBook(ledger, db, PRICES.get)

        async def nothing(row: dict[str, Any]) -> None:
            return None

        a = TaskPoller(book, "a", 10, 300, nothing, nothing)
        b = TaskPoller(book, "b", 10, 300, nothing, nothing)
        assert await a.run_pass() and not await b.run_pass()
        a.start()
        await a.stop()  # gives the lease up: b takes over at once
        assert await b.run_pass() and not await a.run_pass()
        await db.close()

    asyncio.run(scenario())


def test_a_submission_cancelled_while_its_task_commits_keeps_its_hold(tmp_path: Path) -> None:
    """The handler is cancelled (a shutdown) just as the task row commits: the hold is left to the task."""
    import tomllib

    from core import config
    from core.metrics import Metrics
    from core.requestlog import RequestLog
    from core.tasks import TaskRelay
    from core import demo
    from core.upstream import Upstreams

    async def scenario() -> None:
        settings = config.parse(tomllib.loads(f"""
[server]
request_log = ""
[billing]
database = "{tmp_path / 'db'}"
[providers.demo]
builtin = "demo"
[models.demo-video]
provider = "demo"
upstream_model = "sora-2"
max_output_tokens = 1
price = {{ input = "0", output = "0", second = "100" }}
"""), {})
        db = store.Store(settings.billing.database)
        await db.start()
        acct = await db.run(store.tx_create_account, "acct", 0.0, 10_000 * USD)
        key = new_key()
        await db.run(store.tx_create_key, acct["id"], "k", key.display, key.hash, 0.0, {})
        ledger = Ledger(db, 0, 0, "owner-x")
        relay = TaskRelay(settings, Upstreams(settings, builtin=demo), Metrics(), RequestLog(""), ledger, db)
        recorded = relay.book.record

        async def record_then_cancelled(task: task_store.NewTask) -> bool:
            await recorded(task)  # the row commits on the database thread...
            raise asyncio.CancelledError  # ...while the handler awaiting it is cancelled

        relay.book.record = record_then_cancelled  # type: ignore[method-assign]
        body = orjson.dumps({"model": "demo-video", "prompt": "interrupted", "seconds": "4"})
        scope = {"type": "http", "method": "POST", "path": "/v1/videos", "query_string": b"",
                 "headers": [(b"authorization", b"Bearer " + key.plaintext.encode()),
                             (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        rid = f"req_{7:025x}"
        with pytest.raises(asyncio.CancelledError):
            await relay(scope, receive, send, rid)
        row = await db.run(task_store.tx_task, "video_tt_" + rid[4:], None)
        assert row is not None and row["status"] == "queued"
        assert [h["request_id"] for h in await db.run(store.tx_open_holds)] == [rid]  # held for the task
        done = {**orjson.loads(row["object"]), "status": "completed", "seconds": "4"}
        await relay.book.end(row, "completed", done)  # its lifecycle settles it: charged, not free
        account_row = await db.run(store.tx_account, acct["id"])
        assert (account_row["balance"], account_row["held"]) == (10_000 * USD - 400 * USD, 0)
        await db.close()

    asyncio.run(scenario())


def test_the_lease_is_kept_through_a_long_pass(tmp_path: Path) -> None:
    """A pass waiting on a slow upstream for longer than the lease lasts keeps the lease: no second poller."""
    async def scenario() -> None:
        db, ledger, key, account_id = await books(tmp_path / "db", 10_000)
        book = TaskBook(ledger, db, PRICES.get)
        await submit(db, ledger, key, account_id, 1)
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(row: dict[str, Any]) -> None:
            entered.set()
            await release.wait()

        async def nothing(row: dict[str, Any]) -> None:
            return None

        a = TaskPoller(book, "a", 0.2, 300, slow, nothing)  # a tick of 0.1 s: the lease lasts 1.3 s
        b = TaskPoller(book, "b", 0.2, 300, nothing, nothing)
        await asyncio.sleep(0.3)  # the task is due a look (polled more than poll_interval ago)
        running = asyncio.create_task(a.run_pass())
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(1.6)  # longer than the lease
        assert not await b.run_pass()
        release.set()
        assert await running
        await db.close()

    asyncio.run(scenario())

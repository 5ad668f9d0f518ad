"""Media URLs for upstreams that cannot fetch them (Gemini): downloaded and sent inline; never from a
private address unless the operator allows it; bounded; refused with a 400 that names the URL."""

from __future__ import annotations

import asyncio
import base64

import openai
import pytest

from core.errors import BadRequest
from core.media import MediaFetcher
from tests.conftest import GatewayProcess
from tests.native_upstream import PNG_DOT, NativeUpstream


def ask_with_image(gw: GatewayProcess, key: str, model: str, url: str) -> openai.types.chat.ChatCompletion:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
    return sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}])


def test_image_urls_reach_gemini_inline(native_gw: GatewayProcess, native_key: str, native: NativeUpstream) -> None:
    for path in ("/media/dot.png", "/media/hop.png"):  # a redirect is followed (and checked again)
        assert ask_with_image(native_gw, native_key, "scripted-gemini", native.base_url + path).choices
        parts = native.requests[-1].body["contents"][0]["parts"]
        inline = [p["inlineData"] for p in parts if "inlineData" in p]
        assert inline == [{"mimeType": "image/png", "data": base64.b64encode(PNG_DOT).decode()}]


def test_image_urls_pass_as_urls_to_upstreams_that_fetch_them(native_gw: GatewayProcess, native_key: str,
                                                               native: NativeUpstream) -> None:
    url = native.base_url + "/media/dot.png"
    ask_with_image(native_gw, native_key, "scripted-anthropic", url)
    blocks = native.requests[-1].body["messages"][0]["content"]
    assert {"type": "url", "url": url} in [b.get("source") for b in blocks if b["type"] == "image"]


def test_a_url_that_is_not_media_is_a_400_naming_it(native_gw: GatewayProcess, native_key: str,
                                                    native: NativeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        ask_with_image(native_gw, native_key, "scripted-gemini", native.base_url + "/media/page.html?token=secret")
    assert "/media/page.html" in bad.value.message and "text/html" in bad.value.message
    assert "secret" not in bad.value.message  # a query string may carry a credential: never echoed


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "http://[::1]/x.png", "http://169.254.169.254/x.png",
                                 "http://localhost:9/x.png", "file:///etc/passwd", "ftp://example.com/x.png"])
def test_private_addresses_and_other_schemes_are_refused(url: str) -> None:
    async def go() -> None:
        fetcher = MediaFetcher(1 << 20, allow_private=False)
        await fetcher.start()
        try:
            with pytest.raises(BadRequest) as refused:
                await fetcher.fetch(url)
            assert refused.value.status == 400
        finally:
            await fetcher.close()

    asyncio.run(go())


def test_size_limit(native: NativeUpstream) -> None:
    async def go() -> None:
        fetcher = MediaFetcher(len(PNG_DOT) - 1, allow_private=True)
        await fetcher.start()
        try:
            with pytest.raises(BadRequest, match="larger than"):
                await fetcher.fetch(native.base_url + "/media/dot.png")
        finally:
            await fetcher.close()

    asyncio.run(go())

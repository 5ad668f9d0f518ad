"""The internal shape's shared helpers: data URLs, tool-call ids (sanitized, carrying signatures),
argument parsing and the format-neutral prompt estimate."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from adapters import internal
from adapters.internal import Chat, Media, Message, Text, Tool, ToolCall, ToolResult


def test_data_urls_become_inline_media_and_jpg_is_jpeg() -> None:
    assert internal.media_from_url("data:image/jpg;base64,/9j/") == Media(mime="image/jpeg", data="/9j/")
    assert internal.media_from_url("data:application/pdf;name=a.pdf;base64,JVBE").mime == "application/pdf"
    remote = internal.media_from_url("https://example.com/cat.png", detail="low")
    assert remote.url == "https://example.com/cat.png" and remote.data is None and remote.detail == "low"
    assert internal.data_url(Media(mime="image/png", data="AAAA")) == "data:image/png;base64,AAAA"


@given(st.text(min_size=0, max_size=80))
def test_sanitized_ids_are_valid_for_anthropic_and_stable(call_id: str) -> None:
    clean = internal.sanitize_call_id(call_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", clean)
    assert internal.sanitize_call_id(call_id) == clean  # the call and its result map to the same id


def test_different_bad_ids_stay_apart() -> None:
    assert internal.sanitize_call_id("functions.Bash:0") != internal.sanitize_call_id("functions.Bash:1")


@given(st.from_regex(r"[A-Za-z0-9_]{1,30}", fullmatch=True).filter(lambda i: internal.SIGNATURE_MARK not in i),
       st.text(min_size=1, max_size=200))
def test_signatures_ride_in_call_ids(call_id: str, signature: str) -> None:
    packed = internal.pack_call_id(call_id, signature)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", packed)  # still a valid Anthropic id
    assert internal.unpack_call_id(packed) == (call_id, signature)
    assert internal.unpack_call_id(call_id) == (call_id, None)


def test_arguments_always_parse_to_an_object() -> None:
    assert internal.parse_arguments('{"city": "Paris"}') == {"city": "Paris"}
    assert internal.parse_arguments("") == {} and internal.parse_arguments("{not json") == {}
    assert internal.parse_arguments("[1, 2]") == {"value": [1, 2]}


def test_the_estimate_counts_every_kind_of_part() -> None:
    base = Chat(messages=[Message("user", [Text("hello world")])])
    small = internal.estimate_prompt(base)
    assert small > 2
    richer = Chat(system=[Text("Be brief.")], tools=[Tool("get_weather", "Weather", {"type": "object"})],
                  messages=[Message("user", [Text("hello world"), Media(mime="image/png", data="AAAA")]),
                            Message("assistant", [ToolCall("c1", "get_weather", '{"city":"Paris"}')]),
                            Message("user", [ToolResult("c1", [Text("sunny")])])])
    assert internal.estimate_prompt(richer) > small + 765  # an image alone is 765


def test_an_id_with_a_trailing_newline_is_rewritten() -> None:  # `$` in a pattern passes "\n" at the end
    clean = internal.sanitize_call_id("toolu_1\n")
    assert clean != "toolu_1\n" and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", clean)


def test_an_item_type_is_quoted_back_only_when_it_is_a_plain_name() -> None:
    from adapters.openai.responses_request import _unsupported_item
    assert "'web_search_call' item" in _unsupported_item("web_search_call", "input[0]")
    assert "\n" not in _unsupported_item("web_search_call\n", "input[0]")

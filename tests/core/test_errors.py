"""pydantic errors read as the key paths people wrote, whatever union branches pydantic tried."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from llmkit.core.errors import key_path, problems


class Part(BaseModel):
    text: str


class Message(BaseModel):
    content: str | list[Part]


class Request(BaseModel):
    messages: list[Message]
    stop: str | list[str] | None = None
    ids: list[int] = []


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Request.model_validate(data)
    return problems(info.value)


def test_union_branches_leave_the_path_and_their_messages_join():
    assert key_path(("messages", 0, "list[Part]", 1, "Part", "text")) == "messages[0][1].text"
    assert key_path(("stop", "function-after[_valid(), str]")) == "stop" and key_path(()) == ""
    assert errors_of({"messages": [{"content": 5}]}) == [
        "messages[0].content: Input should be a valid string; or Input should be a valid list (got 5)"
    ]
    assert errors_of({"messages": [{"content": [{"text": 1}]}]}) == [
        "messages[0].content: Input should be a valid string (got [{'text': 1}])",
        "messages[0].content[0].text: Input should be a valid string (got 1)",
    ]


def test_a_mapping_is_not_repeated_a_long_value_is_cut_and_keys_can_be_renamed():
    with pytest.raises(ValidationError) as info:
        Request.model_validate({"messages": {"a": 1}, "ids": ["x" * 500]})
    lines = problems(info.value, key=lambda path: f"--{path}")
    assert lines[0] == (
        "--messages: Input should be a valid list, not a mapping: write `- ` before each entry (`- a: ...` where "
        "this mapping is one entry)"
    )
    assert lines[1].startswith("--ids[0]: Input should be a valid integer") and lines[1].endswith("...)")
    assert len(lines[1]) < 250

"""JSONL request files: good lines parse, bad ones name the file and line."""

import pytest

from vcascade.engine.jsonl import InputFileError, done_ids, read_requests


def write(tmp_path, text):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    return path


def test_prompts_messages_and_default_ids(tmp_path):
    path = write(tmp_path, '{"id": "a", "prompt": "Hi", "answers": ["x"]}\n\n'
                           '{"messages": [{"role": "user", "content": "Yo"}], "max_tokens": 5}\n'
                           '{"prompt": "raw text", "raw": true}\n')
    a, b, c = read_requests(path)
    assert (a.id, a.prompt) == ("a", "Hi")
    assert b.id == "3" and b.messages[0]["content"] == "Yo" and b.max_tokens == 5
    assert c.raw and c.id == "4"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "ok"', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": "x"}', "exactly one of 'prompt' and 'messages'"),
        ('{"prompt": "a", "messages": []}', "exactly one of"),
        ('{"prompt": 3}', "'prompt' must be a string"),
        ('{"messages": [{"role": "user"}]}', "string 'role' and 'content'"),
        ('{"messages": "hello"}', "'messages' must be a list"),
        ('{"prompt": "a", "max_tokens": -2}', "'max_tokens' must be a positive integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path, '{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(InputFileError) as err:
        read_requests(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)


def test_duplicate_ids(tmp_path):
    path = write(tmp_path, '{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n')
    with pytest.raises(InputFileError, match=":2: duplicate id '1'"):
        read_requests(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    with pytest.raises(InputFileError, match="no requests"):
        read_requests(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="file not found"):
        read_requests(tmp_path / "nope.jsonl")


def test_done_ids_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "te')
    assert done_ids(path) == {"a"}
    assert done_ids(tmp_path / "none.jsonl") == set()

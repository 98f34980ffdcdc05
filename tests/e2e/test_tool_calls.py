"""Tool calls on a real node (--enable-auto-tool-choice --tool-call-parser), driven by the
official openai client.

The parsers themselves (every format, content beside calls, broken calls as content,
streaming in every split) are tested in tests/unit/test_toolcall.c.  The default model
(SmolLM2-135M) does not emit tool calls, so here: the start-up checks of the two options,
tool_choice "auto" (given, or implied by tools) accepted and answered in the chat shape
with the model's text as content, the streamed content equal to the non-streamed one
(the parser holds back only what could start a call, and gives it back at the end),
"required" and named choices refused, and "auto" refused on a node without the options.
"""
import subprocess

import openai
import pytest

from pdtest import NODE_ARGS, binary

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MSG = [{"role": "user", "content": "What is the weather in Paris? Answer in one sentence."}]


@pytest.fixture(scope="module")
def tool_node(node_factory):
    node = node_factory(["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    yield node
    assert node.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("args,rc,message", [
    (["--enable-auto-tool-choice"], 2, "--enable-auto-tool-choice needs --tool-call-parser"),  # the parser's check
    (["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"], 1,
     "--tool-call-parser: 'pythonic' is not supported yet; supported: hermes, llama3_json, mistral"),
    (["--tool-call-parser", "hermes2"], 1, "--tool-call-parser: 'hermes2' is not one of hermes, llama3_json, mistral"),
])
def test_start_up_checks(model_path, args, rc, message):
    p = subprocess.run([binary("pdserve-decode"), "--model", model_path, *NODE_ARGS, *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == rc
    assert p.stderr == f"pdserve-decode: error: {message}\n", p.stderr


@pytest.mark.parametrize("choice", ["auto", None])
def test_auto_tool_choice_answers_in_the_chat_shape(tool_node, choice):
    extra = {"tool_choice": choice} if choice else {}
    c = client(tool_node)
    r = c.chat.completions.create(model=c.models.list().data[0].id, messages=MSG, tools=TOOLS, max_tokens=24,
                                  temperature=0, **extra)
    msg = r.choices[0].message
    # this model answers in text: no call, the text is the content
    assert msg.role == "assistant" and msg.content
    assert not msg.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")
    # tool_choice none: the same prompt, no parsing: the same text
    r2 = c.chat.completions.create(model=r.model, messages=MSG, tools=TOOLS, tool_choice="none", max_tokens=24,
                                   temperature=0)
    assert r2.choices[0].message.content == msg.content


def test_streamed_content_equals_whole(tool_node):
    c = client(tool_node)
    model = c.models.list().data[0].id
    whole = c.chat.completions.create(model=model, messages=MSG, tools=TOOLS, tool_choice="auto", max_tokens=40,
                                      temperature=0)
    parts, finish, tool_deltas = [], None, 0
    for ch in c.chat.completions.create(model=model, messages=MSG, tools=TOOLS, tool_choice="auto", max_tokens=40,
                                        temperature=0, stream=True):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        if d.content:
            parts.append(d.content)
        if d.tool_calls:
            tool_deltas += 1
        if ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    assert "".join(parts) == whole.choices[0].message.content
    assert tool_deltas == 0 and finish == whole.choices[0].finish_reason


@pytest.mark.parametrize("choice,needle", [
    ("required", "guided decoding"),
    ({"type": "function", "function": {"name": "get_weather"}}, "guided decoding"),
    ("sometimes", "tool_choice must be"),
])
def test_refused_choices(tool_node, choice, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client(tool_node).chat.completions.create(model=client(tool_node).models.list().data[0].id, messages=MSG,
                                                  tools=TOOLS, tool_choice=choice, max_tokens=4)
    assert needle in str(e.value)
    # tool_choice auto without tools
    with pytest.raises(openai.BadRequestError) as e:
        client(tool_node).chat.completions.create(model=client(tool_node).models.list().data[0].id, messages=MSG,
                                                  tool_choice="auto", max_tokens=4)
    assert "`tools` must be set" in str(e.value)


def test_auto_refused_without_the_options(decode_node):
    with pytest.raises(openai.BadRequestError) as e:
        client(decode_node).chat.completions.create(model="smol", messages=MSG, tools=TOOLS, tool_choice="auto",
                                                    max_tokens=4)
    assert "--enable-auto-tool-choice" in str(e.value)
    # tools alone on such a node: no parsing, a normal answer
    r = client(decode_node).chat.completions.create(model="smol", messages=MSG, tools=TOOLS, max_tokens=4)
    assert r.choices[0].message.content is not None

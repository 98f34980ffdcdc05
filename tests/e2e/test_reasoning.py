"""--enable-reasoning --reasoning-parser deepseek_r1 on a real node, with the official
openai client.  The parser itself (every split of every case, streamed against the whole)
is tested in tests/unit/test_reasoning.c.  The default model never writes </think>, so
under deepseek_r1's rule its whole answer is reasoning: message.reasoning_content is
what a plain node answers as content, content is null, the streamed reasoning deltas
join to the same text, and completions are untouched."""
import pytest

import openai

MSG = [{"role": "user", "content": "Why is the sky blue? One sentence."}]


@pytest.fixture(scope="module")
def reasoning_node(node_factory):
    node = node_factory(["--enable-reasoning", "--reasoning-parser", "deepseek_r1", "--served-model-name", "smol"])
    yield node
    assert node.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


def test_reasoning_content_and_stream(reasoning_node, decode_node):
    c = client(reasoning_node)
    plain = client(decode_node).chat.completions.create(model="smol", messages=MSG, max_tokens=24, temperature=0)
    r = c.chat.completions.create(model="smol", messages=MSG, max_tokens=24, temperature=0)
    msg = r.choices[0].message
    assert msg.reasoning_content == plain.choices[0].message.content
    assert msg.content is None
    parts, content = [], []
    for ch in c.chat.completions.create(model="smol", messages=MSG, max_tokens=24, temperature=0, stream=True):
        if ch.choices:
            d = ch.choices[0].delta
            rc = getattr(d, "reasoning_content", None) or (d.model_extra or {}).get("reasoning_content")
            if rc:
                parts.append(rc)
            if d.content:
                content.append(d.content)
    assert "".join(parts) == msg.reasoning_content and not content
    # completions are not chat: no reasoning split
    t = c.completions.create(model="smol", prompt="The sky is", max_tokens=8, temperature=0)
    assert t.choices[0].text == client(decode_node).completions.create(model="smol", prompt="The sky is", max_tokens=8,
                                                                       temperature=0).choices[0].text


def test_parser_required(model_path):
    import subprocess
    from pdtest import NODE_ARGS, binary
    p = subprocess.run([binary("pdserve-decode"), "--model", model_path, *NODE_ARGS, "--enable-reasoning"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--enable-reasoning needs --reasoning-parser" in p.stderr
    p = subprocess.run([binary("pdserve-decode"), "--model", model_path, *NODE_ARGS, "--enable-reasoning",
                        "--reasoning-parser", "granite"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "'granite' is not one of deepseek_r1" in p.stderr

"""Black-box checks of the pd_http wire format with the official openai client.

Builds tests/http/demo_server.c against the already built libpd_common.a (env
PD_BINARY_DIR, default ./build) and talks to it over 127.0.0.1.  Skips when the
library, a C compiler or the openai package is missing.
"""
import os
import shutil
import subprocess
import tempfile

import pytest

openai = pytest.importorskip("openai")

SRC = os.environ.get("PD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PD_BINARY_DIR", os.path.join(SRC, "build"))
LIB = os.path.join(BIN, "common", "libpd_common.a")
KEY = "sk-demo-key"


def _pkg_libs():
    out = subprocess.run(
        ["pkg-config", "--libs", "libmicrohttpd", "libcjson", "gnutls", "yaml-0.1"],
        capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.fixture(scope="module")
def server():
    cc = os.environ.get("CC", "cc")
    if not os.path.exists(LIB) or shutil.which(cc) is None or shutil.which("pkg-config") is None:
        pytest.skip("libpd_common.a or a C compiler is missing")
    tmp = tempfile.mkdtemp(prefix="pd_http_py_")
    exe = os.path.join(tmp, "demo_server")
    subprocess.run([cc, "-O1", "-I", os.path.join(SRC, "common"),
                    os.path.join(SRC, "tests", "http", "demo_server.c"), LIB, *_pkg_libs(),
                    "-lpthread", "-ldl", "-lm", "-o", exe], check=True)
    proc = subprocess.Popen([exe, "--api-key", KEY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("port "), line
    port = int(line.split()[1])
    yield port
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    shutil.rmtree(tmp, ignore_errors=True)


def client(port, key=KEY):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def test_models_and_completion(server):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["demo"]
    r = c.completions.create(model="demo", prompt="hi", max_tokens=3)
    assert r.choices[0].text == "tok0 tok1 tok2"
    assert r.usage.completion_tokens == 3


def test_streaming(server):
    c = client(server)
    chunks = list(c.completions.create(model="demo", prompt="hi", max_tokens=5, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == "tok0 tok1 tok2 tok3 tok4"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_bad_request_names_param(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="demo", prompt="hi", max_tokens=1000)
    err = ei.value.body
    assert err["param"] == "max_tokens"
    assert "max_tokens" in err["message"]
    assert err["code"] == 400
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="demo", prompt="hi", temperature=-1)
    assert ei.value.body["param"] == "temperature"
    # the server keeps working after bad input
    assert c.completions.create(model="demo", prompt="x", max_tokens=1).choices[0].text == "tok0"


def test_auth_and_not_found(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="demo", input="x")


def test_request_id_echo(server):
    c = client(server)
    raw = c.completions.with_raw_response.create(
        model="demo", prompt="hi", max_tokens=1, extra_headers={"X-Request-Id": "abc-123"})
    assert raw.headers["x-request-id"] == "abc-123"

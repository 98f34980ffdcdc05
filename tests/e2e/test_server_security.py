"""The node server's security and HTTP options, on real pdserve-decode processes with the
default model: --api-key, TLS and mutual TLS (certificates made here with the openssl
CLI), CORS, --root-path, --enable-request-id-headers, --middleware (a .so built here
with cc), --disable-log-requests, --disable-fastapi-docs, and SIGTERM drain."""
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time

import openai

try:  # the openai client's HTTP library (httpx, or httpx2 in newer releases)
    import httpx2 as httpx
except ImportError:
    import httpx
import pytest

from pdtest import ROOT, start_node, wait_http

KEY = "sekret-key-123"
MW_C = r'''
#include <string.h>
#include "pd_http.h"
/* rejects "X-Deny: please" with 403; tags every other response */
int qa_mw(pd_http_req_t *req, void *user)
{
    const pd_http_mw_api_t *api = user;
    if (api == NULL || api->version < 1)
        return 500;
    const char *v = api->req_header(req, "X-Deny");
    if (v != NULL && strcmp(v, "please") == 0) {
        api->respond_error(req, 403, NULL, "denied by qa middleware", NULL, NULL);
        return 403;
    }
    api->req_add_header(req, "X-QA-Middleware", "seen");
    return 0;
}
'''


def raw(url_port, method, path, body=None, headers=None, https_ctx=None):
    if https_ctx is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", url_port, timeout=30, context=https_ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=30)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload, {k.lower(): v for k, v in r.getheaders()}


def err_of(status, payload, code):
    assert status == code, payload
    e = json.loads(payload)["error"]
    assert set(e) == {"message", "type", "param", "code"}
    return e


@pytest.fixture(scope="module")
def mw_so(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the middleware")
    d = tmp_path_factory.mktemp("mw")
    src = d / "qa_mw.c"
    src.write_text(MW_C)
    so = d / "qa_mw.so"
    subprocess.run([cc, "-shared", "-fPIC", "-I", os.path.join(ROOT, "common"), "-o", str(so), str(src)], check=True)
    return str(so)


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path, mw_so):
    """api key + CORS allowlist with credentials + root path + request ids + middleware +
    no docs + no request log."""
    n = start_node(tmp_path_factory, model_path, [
        "--served-model-name", "smol", "--api-key", KEY, "--allowed-origins", '["http://a.example"]',
        "--allow-credentials", "--root-path", "/api", "--enable-request-id-headers",
        "--middleware", mw_so + ":qa_mw", "--disable-fastapi-docs", "--disable-log-requests"])
    yield n
    assert n.stop() == 0


AUTH = {"Authorization": "Bearer " + KEY}
V1_ROUTES = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
             ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
             ("POST", "/v1/embeddings", {"input": "x"}), ("GET", "/v1/nope", None), ("POST", "/v1/models", {})]


@pytest.mark.parametrize("method,path,body", V1_ROUTES, ids=[r[1] + "-" + r[0] for r in V1_ROUTES])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer " + KEY[:-1], KEY, "Basic " + KEY, "Bearer"])
def test_api_key_required_on_every_v1_route(node, method, path, body, auth):
    h = {"Authorization": auth} if auth else {}
    for prefix in ("", "/api"):
        e = err_of(*raw(node.port, method, prefix + path, body, h)[:2], 401)
        assert e["type"] == "AuthenticationError"


def test_api_key_accepted_and_open_routes(node):
    assert raw(node.port, "GET", "/v1/models", headers=AUTH)[0] == 200
    c = openai.OpenAI(base_url=node.url + "/api/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in c.models.list().data] == ["smol"]
    assert c.completions.create(model="smol", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=node.url + "/api/v1", api_key="bad", max_retries=0).models.list()
    for path in ("/health", "/ping", "/api/health", "/version", "/metrics", "/tokenize"):
        st = raw(node.port, "POST" if path == "/tokenize" else "GET", path,
                 {"prompt": "x"} if path == "/tokenize" else None)[0]
        assert st == 200, path


def test_root_path(node):
    a = raw(node.port, "GET", "/api/v1/models", headers=AUTH)
    b = raw(node.port, "GET", "/v1/models", headers=AUTH)
    assert a[0] == b[0] == 200 and json.loads(a[1])["data"] == json.loads(b[1])["data"]
    assert raw(node.port, "GET", "/apix/v1/models", headers=AUTH)[0] == 404  # segment boundary only


def test_request_id_headers(node):
    st, _, h = raw(node.port, "GET", "/health", headers={"X-Request-Id": "my-id-42"})
    assert st == 200 and h["x-request-id"] == "my-id-42"
    st, _, h = raw(node.port, "GET", "/health")
    assert re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"])
    # errors carry it too, and a bad id is replaced
    st, _, h = raw(node.port, "GET", "/v1/models", headers={"X-Request-Id": "bad\x01id"})
    assert st == 401 and re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"])
    st, _, h = raw(node.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1},
                   {**AUTH, "X-Request-Id": "req-77"})
    assert st == 200 and h["x-request-id"] == "req-77"


def test_cors(node):
    pre = {"Origin": "http://a.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    st, body, h = raw(node.port, "OPTIONS", "/v1/completions", headers=pre)  # never needs the key
    assert st == 200
    assert h["access-control-allow-origin"] == "http://a.example"
    assert h["access-control-allow-credentials"] == "true"
    assert "POST" in h["access-control-allow-methods"]
    assert "vary" in h and "Origin" in h["vary"]
    st, body, h = raw(node.port, "OPTIONS", "/v1/completions", headers={**pre, "Origin": "http://evil.example"})
    assert st == 400 and "access-control-allow-origin" not in h
    # simple requests: the listed origin is echoed (never '*' beside credentials)
    st, _, h = raw(node.port, "GET", "/v1/models", headers={**AUTH, "Origin": "http://a.example"})
    assert st == 200 and h["access-control-allow-origin"] == "http://a.example"
    assert h["access-control-allow-credentials"] == "true"
    st, _, h = raw(node.port, "GET", "/v1/models", headers={**AUTH, "Origin": "http://evil.example"})
    assert st == 200 and "access-control-allow-origin" not in h
    st, _, h = raw(node.port, "GET", "/v1/models", headers={"Origin": "http://a.example"})
    assert st == 401 and h["access-control-allow-origin"] == "http://a.example"  # errors too


def test_middleware(node):
    st, payload, h = raw(node.port, "GET", "/health", headers={"X-Deny": "please"})
    e = err_of(st, payload, 403)
    assert e["message"] == "denied by qa middleware" and e["type"] == "PermissionDeniedError"
    st, payload, h = raw(node.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1},
                         {**AUTH, "X-Deny": "please"})
    assert st == 403
    st, _, h = raw(node.port, "GET", "/health", headers={"X-Deny": "no"})
    assert st == 200 and h["x-qa-middleware"] == "seen"


def test_docs_disabled(node):
    for path in ("/docs", "/openapi.json", "/api/docs"):
        e = err_of(*raw(node.port, "GET", path)[:2], 404)
        assert e["type"] == "NotFoundError"


def test_request_log_disabled(node):
    raw(node.port, "POST", "/v1/completions", {"prompt": "UNIQUE-PROMPT-MARKER", "max_tokens": 1}, AUTH)
    time.sleep(0.2)
    log = node.logtext()
    assert "UNIQUE-PROMPT-MARKER" not in log
    assert '"POST /v1/completions"' not in log  # no access-log lines either


def test_request_log_enabled_by_default(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--max-log-len", "12"])
    try:
        raw(n.port, "POST", "/v1/completions", {"prompt": "UNIQUE-PROMPT-MARKER-and-more", "max_tokens": 1})
        time.sleep(0.2)
        log = n.logtext()
        assert "prompt: 'UNIQUE-PROMP'..." in log and "MARKER" not in log
        assert '"POST /v1/completions" 200' in log
    finally:
        assert n.stop() == 0


# ---- TLS ----

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=pdserve test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "qa client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", *(["-extfile", "san.ext"] if name == "server" else []), cwd=d)
    # a client certificate from another CA
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
            "-days", "2", "-subj", "/CN=rogue", cwd=d)
    return d


def tls_node(tmp_path_factory, model_path, certs, extra=()):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if extra:
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    return start_node(tmp_path_factory, model_path, ["--served-model-name", "smol",
                                                     "--ssl-keyfile", str(certs / "server.key"),
                                                     "--ssl-certfile", str(certs / "server.pem"), *extra],
                      scheme="https", ctx=ctx)


def test_tls(tmp_path_factory, model_path, certs):
    n = tls_node(tmp_path_factory, model_path, certs)
    try:
        c = openai.OpenAI(base_url=n.url + "/v1", api_key="none", max_retries=0,
                          http_client=httpx.Client(verify=str(certs / "ca.pem")))
        assert c.completions.create(model="smol", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
        chunks = list(c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=3, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        # the default trust store does not know our CA
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=n.url + "/v1", api_key="none", max_retries=0).models.list()
        # plain HTTP to the TLS port gets no answer
        with pytest.raises(Exception):
            raw(n.port, "GET", "/health")
    finally:
        assert n.stop() == 0


def test_mutual_tls_required(tmp_path_factory, model_path, certs):
    n = tls_node(tmp_path_factory, model_path, certs,
                 ["--ssl-ca-certs", str(certs / "ca.pem"), "--ssl-cert-reqs", "2"])
    try:
        ca = str(certs / "ca.pem")
        mine = ssl.create_default_context(cafile=ca)
        mine.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        good = openai.OpenAI(base_url=n.url + "/v1", api_key="none", max_retries=0,
                             http_client=httpx.Client(verify=mine))
        assert [m.id for m in good.models.list().data] == ["smol"]
        assert good.completions.create(model="smol", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
        # no client certificate: refused (403 at the HTTP level, or a failed handshake)
        nocert = ssl.create_default_context(cafile=ca)
        try:
            st, payload, _ = raw(n.port, "GET", "/v1/models", https_ctx=nocert)
            e = err_of(st, payload, 403)
            assert e["code"] in (403, "client_certificate_required")
        except (ssl.SSLError, ConnectionError):
            pass
        # a certificate from another CA: refused too
        rogue = ssl.create_default_context(cafile=ca)
        rogue.load_cert_chain(str(certs / "rogue.pem"), str(certs / "rogue.key"))
        try:
            st, payload, _ = raw(n.port, "GET", "/health", https_ctx=rogue)
            assert st == 403
        except (ssl.SSLError, ConnectionError):
            pass
        with pytest.raises((openai.PermissionDeniedError, openai.APIConnectionError)):
            openai.OpenAI(base_url=n.url + "/v1", api_key="none", max_retries=0,
                          http_client=httpx.Client(verify=ca)).models.list()
    finally:
        assert n.stop() == 0


# ---- SIGTERM drain ----

def test_sigterm_drains_stream_then_exits_0(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--drain-timeout", "60"])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "Tell me a long story.", "max_tokens": 60, "ignore_eos": True, "stream": True}),
            headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        first = r.readline()
        assert first.startswith(b"data: ")
        n.proc.send_signal(signal.SIGTERM)
        # /health says 503 while the stream is still going; new work is refused
        deadline = time.time() + 5
        st = None
        while time.time() < deadline:
            st, payload, h = raw(n.port, "GET", "/health")
            if st == 503:
                break
            time.sleep(0.02)
        assert st == 503
        assert err_of(st, payload, 503)["type"] == "ServiceUnavailableError"
        st, payload, _ = raw(n.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        assert st == 503
        assert n.proc.poll() is None  # still draining
        rest = r.read().decode()
        events = [l[6:] for l in (first.decode() + rest).splitlines() if l.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] == "length"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert text
        conn.close()
        assert n.proc.wait(timeout=30) == 0
    finally:
        n.stop()

"""pdserve-proxy as users see it: real proxy and decode processes (the default model),
a fake prefill node (tests/proxy/fake_prefill.py) that records what the proxy sends, the
official openai client and raw HTTP."""
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest


from pdtest import ROOT, Node, free_port, start_node, wait_http, wait_idle  # noqa: E402

FAKE = os.path.join(ROOT, "tests", "proxy", "fake_prefill.py")
FAKE_KV = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [1, 2, 3],
           "remote_engine_id": "fake-prefill-engine", "remote_request_id": "fake-req",
           "remote_host": "127.0.0.1", "remote_port": 14579, "tp_size": 1}
PREFILL_KV = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
              "remote_block_ids": None, "remote_host": None, "remote_port": None}


class Fake:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, FAKE, str(self.port)])
        wait_http(self.url + "/health", proc=self.proc)

    def received(self):
        with urllib.request.urlopen(self.url + "/_received") as r:
            return json.loads(r.read())

    def set_status(self, status, kv=True, retry_after=None):
        req = urllib.request.Request(self.url + "/_mode", data=json.dumps({"status": status, "kv": kv,
                                                                           "retry_after": retry_after}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def start_proxy(tmp_path_factory, args, wait="/health"):
    port = free_port()
    log = str(tmp_path_factory.mktemp("proxy") / "proxy.log")
    px = Node("pdserve-proxy", list(args), port, log)
    try:
        wait_http(px.url + wait, proc=px.proc, timeout=30)
    except Exception:
        px.stop()
        raise RuntimeError("proxy did not start:\n" + px.logtext()[-4000:])
    return px


def client(node, **kw):
    return openai.OpenAI(base_url=node.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def post(node, path, body, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request("POST", path, body=json.dumps(body), headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def metric(node, name, label=None):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        text = r.read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total


@pytest.fixture(scope="module")
def proxy1(tmp_path_factory, decode_node):
    """Single-node mode: no prefill pool."""
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{decode_node.port}"])
    yield px
    px.stop()


@pytest.fixture(scope="module")
def fake():
    f = Fake()
    yield f
    f.stop()


def test_completions_and_chat_match_the_node(proxy1, decode_node):
    for path in ("completions", "chat"):
        direct, via = client(decode_node), client(proxy1)
        if path == "completions":
            kw = dict(model="smol", prompt="The capital of France is", max_tokens=12, temperature=0)
            a = direct.completions.create(**kw)
            b = via.completions.create(**kw)
            s = "".join(c.choices[0].text for c in via.completions.create(stream=True, **kw) if c.choices)
            assert b.choices[0].text == a.choices[0].text == s
        else:
            kw = dict(model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=10, temperature=0)
            a = direct.chat.completions.create(**kw)
            b = via.chat.completions.create(**kw)
            s = "".join(c.choices[0].delta.content or "" for c in via.chat.completions.create(stream=True, **kw)
                        if c.choices)
            assert b.choices[0].message.content == a.choices[0].message.content == s
        assert b.usage.completion_tokens == a.usage.completion_tokens


def test_stream_usage_passes_through(proxy1):
    chunks = list(client(proxy1).completions.create(model="smol", prompt="Hello", max_tokens=5, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_models_tokenize_detokenize_forwarded(proxy1, decode_node):
    assert [m.id for m in client(proxy1).models.list().data] == ["smol", "other-name"]
    st, body = post(proxy1, "/tokenize", {"prompt": "Hello world"})
    assert st == 200
    tok = json.loads(body)
    assert tok == json.loads(post(decode_node, "/tokenize", {"prompt": "Hello world"})[1])
    st, body = post(proxy1, "/detokenize", {"tokens": tok["tokens"]})
    assert st == 200 and json.loads(body)["prompt"] == "Hello world"


def test_upstream_400_is_forwarded(proxy1, decode_node):
    bad = {"model": "smol", "prompt": "x", "max_tokens": -3}
    st_direct, body_direct = post(decode_node, "/v1/completions", bad)
    st, body = post(proxy1, "/v1/completions", bad)
    assert st_direct == 400 and st == 400
    assert json.loads(body) == json.loads(body_direct)
    with pytest.raises(openai.BadRequestError):
        client(proxy1).completions.create(model="smol", prompt="x", max_tokens=-3, stream=True)
    with pytest.raises(openai.NotFoundError):
        client(proxy1).completions.create(model="nope", prompt="x", max_tokens=3)
    # malformed JSON is refused by the proxy itself
    conn = http.client.HTTPConnection("127.0.0.1", proxy1.port, timeout=10)
    conn.request("POST", "/v1/completions", body="{nope", headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 400 and "error" in json.loads(r.read())


def test_prefill_leg_shape_and_client_params_stripped(tmp_path_factory, fake):
    """Fake prefill and fake 'decode' (the same recorder) check both legs exactly."""
    dec = Fake()
    px = start_proxy(tmp_path_factory, ["--prefill", fake.addr, "--decode", dec.addr])
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 7,
                "min_tokens": 2, "temperature": 0, "stream": False, "stream_options": {"include_usage": True},
                "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.6.6.6"},
                "request_id": "client-chosen"}
        st, ans = post(px, "/v1/chat/completions", body, headers={"X-Request-Id": "client-id"})
        assert st == 200, ans
        pre = fake.received()[-1]
        assert pre["path"] == "/v1/chat/completions"
        pb = pre["body"]
        assert pb["max_tokens"] == 1 and pb["max_completion_tokens"] == 1 and pb["stream"] is False
        assert "stream_options" not in pb and "min_tokens" not in pb and "request_id" not in pb
        assert pb["kv_transfer_params"] == PREFILL_KV
        assert pb["messages"] == body["messages"] and pb["temperature"] == 0
        rid = pre["headers"]["x-request-id"]
        assert rid.startswith("px-") and rid != "client-id"
        d = dec.received()[-1]
        db = d["body"]
        assert db["kv_transfer_params"] == FAKE_KV  # the prefill's params, not the client's
        assert db["max_tokens"] == 7 and db["min_tokens"] == 2 and db["stream_options"] == {"include_usage": True}
        assert "request_id" not in db and d["headers"]["x-request-id"] == rid
        # completions: max_tokens 1, no max_completion_tokens added
        st, _ = post(px, "/v1/completions", {"model": "m", "prompt": "abc", "max_tokens": 9, "stream": True})
        pb = fake.received()[-1]["body"]
        assert pb["max_tokens"] == 1 and pb["stream"] is False and "max_completion_tokens" not in pb
        assert dec.received()[-1]["body"]["stream"] is True
    finally:
        px.stop()
        dec.stop()


def test_decode_only_body_verbatim_and_duplicates_stripped(tmp_path_factory):
    """Decode-only: a request the proxy need not change reaches the node byte for byte;
    one with transfer parameters (every copy of a duplicated key) has them removed."""
    dec = Fake()
    px = start_proxy(tmp_path_factory, ["--decode", dec.addr])
    try:
        raw = '{"model": "m",  "prompt": "caf\\u00e9 \u00e9",\n "max_tokens": 3, "temperature": 0.70}'
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
        conn.request("POST", "/v1/completions", body=raw.encode(), headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        assert dec.received()[-1]["raw"] == raw
        dup = ('{"model": "m", "prompt": "x", "kv_transfer_params": {"remote_host": "10.6.6.6"}, "max_tokens": 2, '
               '"kv_transfer_params": {"remote_host": "10.7.7.7"}, "request_id": "a", "request_id": "b"}')
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
        conn.request("POST", "/v1/completions", body=dup.encode(), headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        got = dec.received()[-1]
        assert "kv_transfer_params" not in got["raw"] and "request_id" not in got["raw"]
        assert got["body"]["max_tokens"] == 2 and got["body"]["prompt"] == "x"
    finally:
        px.stop()
        dec.stop()


def test_split_with_real_decode_and_conditional_disagg(tmp_path_factory, fake, decode_node):
    # the plain decode node has no KV connector: the fake gives null params (decode recomputes)
    fake.set_status(200, kv=False)
    px = start_proxy(tmp_path_factory, ["--prefill", fake.addr, "--decode", f"127.0.0.1:{decode_node.port}",
                                        "--disagg-min-prompt-tokens", "50"])
    try:
        n0 = len(fake.received())
        c = client(px)
        short = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0)
        assert short.choices[0].text and len(fake.received()) == n0  # straight to decode
        long_prompt = "Once upon a time " * 20  # 340 bytes: ~85 estimated tokens
        text = "".join(ch.choices[0].text for ch in c.completions.create(
            model="smol", prompt=long_prompt, max_tokens=4, temperature=0, stream=True) if ch.choices)
        assert text and len(fake.received()) == n0 + 1
        assert metric(px, "pdserve_proxy_routed_total", 'path="split"') == 1
        assert metric(px, "pdserve_proxy_routed_total", 'path="decode_only"') == 1
        # a prefill node answering 400 -> the client gets that 400 and its error JSON
        fake.set_status(400)
        st, body = post(px, "/v1/completions", {"model": "smol", "prompt": long_prompt, "max_tokens": 2})
        assert st == 400 and json.loads(body)["error"]["message"] == "fake prefill failure"
        # a prefill node failing with 5xx (after the retries) -> decode prefills itself
        fake.set_status(500, kv=False)
        r = c.completions.create(model="smol", prompt=long_prompt, max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
        assert metric(px, "pdserve_proxy_errors_total", 'kind="prefill_fallback"') == 1
        # an overloaded prefill pool (503 with Retry-After: its queue is full) is not moved
        # onto the decode nodes: the client gets the 503 and the hint
        fake.set_status(503, kv=False, retry_after="3")
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": long_prompt,
                                                                 "max_tokens": 2}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 503 and resp.getheader("Retry-After") == "3", (resp.status, body[:200])
        assert json.loads(body)["error"]["message"] == "fake prefill failure"
        assert metric(px, "pdserve_proxy_errors_total", 'kind="prefill_fallback"') == 1
    finally:
        fake.set_status(200)
        px.stop()


def test_dead_decode_node_is_retried_on_the_other(tmp_path_factory, decode_node):
    dead = free_port()
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{dead}", "--decode", f"127.0.0.1:{decode_node.port}"],
                     wait="/status")
    try:
        c = client(px)
        for i in range(4):
            r = c.completions.create(model="smol", prompt="Hi", max_tokens=2, stream=(i % 2 == 1))
            if i % 2 == 0:
                assert r.choices[0].text is not None
            else:
                assert len([ch for ch in r if ch.choices]) >= 1
        st = get_json(px.url + "/status")
        nodes = {n["url"]: n for n in st["decode"]["nodes"]}
        assert nodes[f"http://127.0.0.1:{dead}"]["healthy"] is False
    finally:
        px.stop()


def test_all_decode_nodes_dead_gives_503(tmp_path_factory):
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{free_port()}", "--decode",
                                        f"127.0.0.1:{free_port()}"], wait="/status")
    try:
        for stream in (False, True):
            st, body = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2, "stream": stream})
            assert st == 503, body
            err = json.loads(body)["error"]
            assert err["code"] == 503 and err["message"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(px.url + "/health")
        assert e.value.code == 503
    finally:
        px.stop()


def test_api_key(tmp_path_factory, decode_node):
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{decode_node.port}", "--api-key", "sekrit"])
    try:
        with pytest.raises(openai.AuthenticationError):
            client(px, api_key="wrong").models.list()
        r = client(px, api_key="sekrit").completions.create(model="smol", prompt="Hi", max_tokens=2)
        assert r.usage.completion_tokens == 2
        st, _ = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        assert st == 401
    finally:
        px.stop()


def wait_node_idle(node, start, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric(node, "vllm:num_requests_running") == 0 and metric(node, "pdserve:kv_free_blocks") == start:
            return True
        time.sleep(0.1)
    return False


def test_client_disconnect_aborts_upstream(proxy1, decode_node):
    post(decode_node, "/v1/completions", {"model": "smol", "prompt": "warm", "max_tokens": 1})
    wait_idle(decode_node.url)  # earlier tests on this shared node may still be finishing
    start = metric(decode_node, "pdserve:kv_free_blocks")
    conn = http.client.HTTPConnection("127.0.0.1", proxy1.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": "Tell me a long story.",
                                                             "max_tokens": 1500, "ignore_eos": True,
                                                             "stream": True}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    r.fp.readline()
    # (the metrics are the engine's per-step snapshot, which may trail the first token)
    deadline = time.time() + 10
    while metric(decode_node, "vllm:num_requests_running") != 1 and time.time() < deadline:
        time.sleep(0.02)
    assert metric(decode_node, "vllm:num_requests_running") == 1
    conn.sock.close()
    conn.close()
    assert wait_node_idle(decode_node, start), "decode node still running the request after the client left"
    assert metric(proxy1, "pdserve_proxy_errors_total", 'kind="client_disconnect"') >= 1
    assert post(proxy1, "/v1/completions", {"model": "smol", "prompt": "ok", "max_tokens": 2})[0] == 200


def test_several_relay_threads(tmp_path_factory, decode_node):
    """--relay-threads 3: requests dealt over three relays (each its own connections and
    event loop) give the node's own answers when run together, a client leaving is seen
    on every relay, and an out-of-range value is refused at start-up."""
    bad = subprocess.run([os.path.join(os.environ.get("PDSERVE_BUILD_DIR", os.path.join(ROOT, "build")), "proxy",
                                       "pdserve-proxy"), "--decode", "127.0.0.1:1", "--relay-threads", "65"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--relay-threads" in bad.stderr
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{decode_node.port}", "--relay-threads", "3"])
    try:
        prompts = [f"Item {i}: the colour of the sky is" for i in range(9)]
        direct = [client(decode_node).completions.create(model="smol", prompt=p, max_tokens=8, temperature=0)
                  .choices[0].text for p in prompts]
        got = [None] * len(prompts)

        def one(i):
            stream = client(px).completions.create(model="smol", prompt=prompts[i], max_tokens=8, temperature=0,
                                                   stream=True)
            got[i] = "".join(c.choices[0].text for c in stream if c.choices)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert got == direct
        # three clients leave mid-stream, one after the other: one request on each relay
        wait_idle(decode_node.url)
        start = metric(decode_node, "pdserve:kv_free_blocks")
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
            conn.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": "A long story:",
                                                                     "max_tokens": 1500, "ignore_eos": True,
                                                                     "stream": True}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200
            r.fp.readline()
            conn.sock.close()
            conn.close()
            assert wait_node_idle(decode_node, start), "decode node still running after the client left"
        # the relay counts a leg when libcurl reports it done, which can come just after
        # the node has already let go of the blocks
        for _ in range(200):
            if metric(px, "pdserve_proxy_errors_total", 'kind="client_disconnect"') >= 3:
                break
            time.sleep(0.05)
        assert metric(px, "pdserve_proxy_errors_total", 'kind="client_disconnect"') == 3
        models = get_json(px.url + "/v1/models")
        assert models["data"][0]["id"] == "smol"
    finally:
        px.stop()


def test_max_concurrent_requests_429(tmp_path_factory, decode_node):
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{decode_node.port}",
                                        "--max-concurrent-requests", "1"])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": "Story:",
                                                                 "max_tokens": 1000, "ignore_eos": True,
                                                                 "stream": True}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.fp.readline()
        with pytest.raises(openai.RateLimitError):
            client(px).completions.create(model="smol", prompt="Hi", max_tokens=2)
        conn.sock.close()
        conn.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            st, _ = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
            if st == 200:
                break
            time.sleep(0.1)
        assert st == 200
    finally:
        px.stop()


def test_registration_over_zeromq(tmp_path_factory, decode_node):
    zmq = pytest.importorskip("zmq")
    reg = f"tcp://127.0.0.1:{free_port()}"
    px = start_proxy(tmp_path_factory, ["--register-bind", reg, "--heartbeat-timeout", "1"], wait="/status")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(reg)
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            sock.send_string(json.dumps({"type": "D", "http_address": f"127.0.0.1:{decode_node.port}",
                                         "zmq_address": "tcp://127.0.0.1:1", "load": 0, "queue": 2,
                                         "kv_usage": 0.25, "prefix_hashes": ["00ff"]}))
            stop.wait(0.2)

    t = threading.Thread(target=beat)
    t.start()
    try:
        sock.send(b"\xff not json")  # dropped, the receiver keeps going
        wait_http(px.url + "/health", timeout=10)
        node = get_json(px.url + "/status")["decode"]["nodes"][0]
        assert node["source"] == "registered" and node["healthy"] and node["kv_usage"] == 0.25
        assert node["queue"] == 2
        r = client(px).completions.create(model="smol", prompt="Hi", max_tokens=2)
        assert r.usage.completion_tokens == 2
        stop.set()
        t.join()
        time.sleep(1.6)
        assert get_json(px.url + "/status")["decode"]["nodes"][0]["healthy"] is False
        st, body = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        assert st == 503 and json.loads(body)["error"]["code"] == 503
        # it comes back, then says goodbye and leaves at once
        sock.send_string(json.dumps({"type": "D", "http_address": f"127.0.0.1:{decode_node.port}"}))
        wait_http(px.url + "/health", timeout=5)
        sock.send_string(json.dumps({"type": "D", "http_address": f"127.0.0.1:{decode_node.port}", "bye": True}))
        time.sleep(0.5)
        assert get_json(px.url + "/status")["decode"]["nodes"][0]["healthy"] is False
    finally:
        stop.set()
        t.join()
        sock.close()
        ctx.term()
        px.stop()


def test_status_page_and_metrics(proxy1):
    client(proxy1).completions.create(model="smol", prompt="Hi", max_tokens=2)
    st = get_json(proxy1.url + "/status")
    assert st["decode"]["policy"] == "round_robin" and st["decode"]["nodes"][0]["healthy"]
    assert st["prefill"]["nodes"] == []
    req = urllib.request.Request(proxy1.url + "/status", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req) as r:
        assert "<table" in r.read().decode()
    assert metric(proxy1, "pdserve_proxy_requests_total", 'endpoint="completions"') >= 1
    assert metric(proxy1, "pdserve_proxy_upstream_latency_seconds_count", 'leg="decode"') >= 1
    assert metric(proxy1, "pdserve_proxy_pool_nodes", 'role="decode",state="healthy"') == 1


def running(node):
    try:
        return metric(node, "vllm:num_requests_running")
    except Exception:
        return 0


@pytest.mark.parametrize("chat", [False, True])
def test_decode_failover_mid_stream(tmp_path_factory, model_path, chat):
    """A decode node killed mid-stream: the proxy resumes on the other node from the text
    already sent, and the client sees one stream that ends normally."""
    nodes = [start_node(tmp_path_factory, model_path, ["--served-model-name", "smol"]) for _ in range(2)]
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{nodes[0].port}", "--decode",
                                        f"127.0.0.1:{nodes[1].port}"])
    try:
        c = client(px, timeout=60)
        if chat:
            stream = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Count to fifty."}],
                                               max_tokens=120, temperature=0, stream=True,
                                               extra_body={"ignore_eos": True})
        else:
            stream = c.completions.create(model="smol", prompt="Once upon a time", max_tokens=120, temperature=0,
                                          stream=True, extra_body={"ignore_eos": True})
        texts, finish, killed = [], None, None
        for ch in stream:
            if not ch.choices:
                continue
            t = ch.choices[0].delta.content if chat else ch.choices[0].text
            if t:
                texts.append(t)
            finish = ch.choices[0].finish_reason or finish
            if len(texts) == 10 and killed is None:
                killed = next(n for n in nodes if running(n) == 1)
                killed.proc.kill()
        assert killed is not None
        assert finish == "length"
        assert 110 <= len(texts) <= 125  # one stream, about max_tokens content events
        assert metric(px, "pdserve_proxy_failovers_total") == 1
        survivor = next(n for n in nodes if n is not killed)
        # the client has [DONE] a moment before the node counts the request finished
        assert wait_idle(survivor.url, timeout=10).get("vllm:num_requests_running", 0) == 0
    finally:
        px.stop()
        for n in nodes:
            n.stop()


def test_stream_first_token(tmp_path_factory, fake, decode_node):
    """--stream-first-token: the prefill's token ('X' from the fake) is the first content
    chunk; the decode leg continues after it, so the stream equals 'X' + a direct
    continuation of prompt + 'X'."""
    fake.set_status(200, kv=False)  # the plain decode node has no KV connector
    px = start_proxy(tmp_path_factory, ["--prefill", fake.addr, "--decode", f"127.0.0.1:{decode_node.port}",
                                        "--stream-first-token"])
    try:
        c, d = client(px), client(decode_node)
        prompt = "The capital of France is"
        chunks = [ch.choices[0].text for ch in c.completions.create(model="smol", prompt=prompt, max_tokens=8,
                                                                   temperature=0, stream=True) if ch.choices]
        assert chunks[0] == "X"
        want = d.completions.create(model="smol", prompt=prompt + "X", max_tokens=7, temperature=0).choices[0].text
        assert "".join(chunks) == "X" + want
        # chat: role chunk, then 'X', then the continuation of an assistant message 'X'
        msgs = [{"role": "user", "content": "Name a colour."}]
        ev = list(c.chat.completions.create(model="smol", messages=msgs, max_tokens=6, temperature=0, stream=True))
        roles = [e.choices[0].delta.role for e in ev if e.choices and e.choices[0].delta.role]
        assert roles == ["assistant"]
        content = [e.choices[0].delta.content for e in ev if e.choices and e.choices[0].delta.content]
        assert content[0] == "X"
        want = d.chat.completions.create(model="smol", messages=msgs + [{"role": "assistant", "content": "X"}],
                                         max_tokens=5, temperature=0,
                                         extra_body={"continue_final_message": True, "add_generation_prompt": False})
        assert "".join(content) == "X" + want.choices[0].message.content
        assert ev[-1].choices[0].finish_reason == "length"
        # with tools the decode node may parse calls: never continued after the prefill's
        # token, the whole answer is the decode node's own
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        ev = list(c.chat.completions.create(model="smol", messages=msgs, tools=tools, max_tokens=6, temperature=0,
                                            stream=True))
        content = "".join(e.choices[0].delta.content or "" for e in ev if e.choices)
        want = d.chat.completions.create(model="smol", messages=msgs, tools=tools, max_tokens=6, temperature=0)
        assert content == want.choices[0].message.content and not content.startswith("X")
        # max_tokens 1: the prefill's token is the whole answer
        one = list(c.completions.create(model="smol", prompt=prompt, max_tokens=1, stream=True))
        assert [x.choices[0].text for x in one] == ["X", ""] and one[-1].choices[0].finish_reason == "length"
        assert all(r["body"]["kv_transfer_params"] == PREFILL_KV for r in fake.received())
    finally:
        fake.set_status(200)
        px.stop()


def kv_config(role, port):
    return json.dumps({"kv_connector": "UcxConnector", "kv_role": role, "kv_ip": "127.0.0.1", "kv_port": port,
                       "kv_buffer_device": "cpu", "kv_connector_extra_config": {"control_timeout_s": 2}})


@pytest.fixture(scope="module")
def one_p_one_d(tmp_path_factory, model_path):
    """A real prefill node (kv_producer) and decode node (kv_consumer) over UCX loopback;
    skipped when this build's nodes have no disaggregation yet."""
    nodes = []
    try:
        for name, role in (("pdserve-prefill", "kv_producer"), ("pdserve-decode", "kv_consumer")):
            nodes.append(start_node(tmp_path_factory, model_path,
                                    ["--served-model-name", "smol", "--kv-transfer-config",
                                     kv_config(role, free_port())], name=name))
    except RuntimeError as e:
        for n in nodes:
            n.stop()
        pytest.skip(f"nodes without disaggregation in this build: {str(e)[-300:]}")
    st, body = post(nodes[0], "/v1/completions", {"model": "smol", "prompt": "probe", "max_tokens": 1,
                                                  "kv_transfer_params": PREFILL_KV})
    kvp = json.loads(body).get("kv_transfer_params") if st == 200 else None
    if not isinstance(kvp, dict):
        for n in nodes:
            n.stop()
        pytest.skip("the prefill node does not answer with kv_transfer_params")
    # finish the probe's protocol so the prefill node's lease is released
    post(nodes[1], "/v1/completions", {"model": "smol", "prompt": "probe", "max_tokens": 1, "kv_transfer_params": kvp})
    yield nodes
    for n in nodes:
        n.stop()


@pytest.mark.parametrize("first_token", [False, True])
def test_real_1p1d_through_the_proxy(tmp_path_factory, one_p_one_d, decode_node, first_token):
    pre, dec = one_p_one_d
    args = ["--prefill", f"127.0.0.1:{pre.port}", "--decode", f"127.0.0.1:{dec.port}"]
    px = start_proxy(tmp_path_factory, args + (["--stream-first-token"] if first_token else []))
    try:
        c, ref = client(px), client(decode_node)
        # a prompt per case: the decode node's prefix cache would otherwise hold it already
        prompt = ("The history of Carthage is long. " if first_token else
                  "The history of the Roman Empire is long and complicated. ") * 4
        pulled0 = metric(dec, "pdserve:kv_blocks_transferred_total")
        want = ref.completions.create(model="smol", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
        got = c.completions.create(model="smol", prompt=prompt, max_tokens=12, temperature=0)
        assert got.usage.completion_tokens == 12 and got.choices[0].text == want
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(
            model="smol", prompt=prompt, max_tokens=12, temperature=0, stream=True) if ch.choices)
        if not first_token:
            assert streamed == want  # greedy: equal to a single node
        else:
            assert streamed  # continuation after the prefill's token (text-level)
        msgs = [{"role": "user", "content": f"Tell me about {'Carthage' if first_token else 'Rome'} in two sentences."}]
        a = ref.chat.completions.create(model="smol", messages=msgs, max_tokens=10, temperature=0)
        b = c.chat.completions.create(model="smol", messages=msgs, max_tokens=10, temperature=0)
        assert b.choices[0].message.content == a.choices[0].message.content
        assert metric(dec, "pdserve:kv_blocks_transferred_total") > pulled0
        assert metric(px, "pdserve_proxy_routed_total", 'path="split"') >= 3
        # both nodes settle: no running request, no held lease
        deadline = time.time() + 15
        while time.time() < deadline and (metric(pre, "pdserve:kv_blocks_held") or running(dec)):
            time.sleep(0.1)
        assert metric(pre, "pdserve:kv_blocks_held") == 0 and running(dec) == 0
    finally:
        px.stop()


def test_tls_root_path_and_request_ids(tmp_path_factory, decode_node):
    import shutil
    import ssl
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    d = tmp_path_factory.mktemp("tls")
    key, cert = str(d / "k.pem"), str(d / "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    port = free_port()
    px = Node("pdserve-proxy", ["--decode", f"127.0.0.1:{decode_node.port}", "--ssl-keyfile", key,
                                "--ssl-certfile", cert, "--root-path", "/api", "--enable-request-id-headers"],
              port, str(d / "proxy.log"), scheme="https")
    try:
        wait_http(px.url + "/api/health", proc=px.proc, ctx=ctx)
        req = urllib.request.Request(px.url + "/api/v1/completions",
                                     data=json.dumps({"model": "smol", "prompt": "Hi", "max_tokens": 2}).encode(),
                                     headers={"Content-Type": "application/json", "X-Request-Id": "my-id-1"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert r.status == 200 and r.headers["X-Request-Id"] == "my-id-1"
            assert json.loads(r.read())["usage"]["completion_tokens"] == 2
    finally:
        px.stop()


def test_sigterm_drains(tmp_path_factory, decode_node):
    """SIGTERM: /health 503 and new requests 503 at once, the stream in flight finishes,
    then the proxy exits 0."""
    import signal as sig
    px = start_proxy(tmp_path_factory, ["--decode", f"127.0.0.1:{decode_node.port}", "--drain-timeout", "20"])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": "Story:", "max_tokens": 60,
                                                                 "ignore_eos": True, "stream": True}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.readline().startswith(b"data: ")
        px.proc.send_signal(sig.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(px.url + "/health")
        assert e.value.code == 503
        st, _ = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        assert st == 503
        rest = r.read().decode()
        assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason":"length"' in rest.replace(" ", "")
        assert px.proc.wait(timeout=20) == 0
    finally:
        px.stop()


def test_node_registers_itself_with_the_proxy(tmp_path_factory, node_factory):
    """A real decode node started with --register joins the proxy's pool by its own
    heartbeats (no static --decode), serves through it, and leaves when it stops."""
    reg = f"tcp://127.0.0.1:{free_port()}"
    px = start_proxy(tmp_path_factory, ["--register-bind", reg, "--heartbeat-timeout", "2"], wait="/status")
    node = node_factory(["--register", reg, "--served-model-name", "smol"])
    try:
        deadline = time.time() + 10
        nodes = []
        while time.time() < deadline:
            nodes = get_json(px.url + "/status")["decode"]["nodes"]
            if nodes and nodes[0]["healthy"]:
                break
            time.sleep(0.2)
        assert nodes and nodes[0]["source"] == "registered" and nodes[0]["healthy"]
        assert nodes[0]["url"].endswith(f":{node.port}") or str(node.port) in json.dumps(nodes[0])
        r = client(px).completions.create(model="smol", prompt="Hi", max_tokens=3)
        assert r.usage.completion_tokens == 3
        assert node.stop() == 0  # the goodbye removes it at once
        time.sleep(0.5)
        st, body = post(px, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        assert st == 503
    finally:
        node.stop()
        px.stop()

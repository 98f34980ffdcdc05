"""Overload (RELIABILITY.md: bounded queue, clear 503, no crash, recovery) against a real
pdserve-decode with the default model, two running sequences (--max-num-seqs 2) and a
tiny queue (--max-queued-requests 2):

- deterministic: two long streams run, one request waits (so an n=2 request is one too
  many: n counts), a second one fills the queue, then every
  further request (completions and chat, plain and streamed, the openai client and raw
  HTTP) gets 503 with the OpenAI error JSON (type ServiceUnavailableError, a message
  naming the limit) and Retry-After, streamed ones before any SSE byte; the refusals are
  counted in pdserve:num_requests_rejected_total; after the long streams leave, the
  queued requests complete, every KV block is free and the next request works;
- a burst of concurrent requests: each one either completes or gets that 503, nothing
  else; afterwards the same recovery checks;
- n over --max-num-seqs is a 400 (its group could never run);
- a bad --max-queued-requests value stops start-up with a message.
No test depends on timing: it waits for metrics, never for the clock."""
import http.client
import json
import subprocess
import threading
import time

import openai
import pytest

from pdtest import Node, binary, free_port, node_metrics, start_node, wait_http, wait_idle

LIMIT = 2


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path,
                   ["--served-model-name", "smol", "--max-num-seqs", "2", "--max-queued-requests", str(LIMIT)])
    yield n
    assert n.stop() == 0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, node):
    """pdserve-proxy in single-node mode in front of the overloaded node."""
    port = free_port()
    px = Node("pdserve-proxy", ["--decode", f"127.0.0.1:{node.port}"], port,
              str(tmp_path_factory.mktemp("proxy") / "proxy.log"))
    try:
        wait_http(px.url + "/health", proc=px.proc, timeout=30)
    except Exception:
        px.stop()
        raise RuntimeError("proxy did not start:\n" + px.logtext()[-4000:])
    yield px
    px.stop()


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0, timeout=300)


def wait_metric(node, name, want, timeout=120.0):
    deadline = time.time() + timeout
    while True:
        got = node_metrics(node.url).get(name, 0.0)
        if got == want:
            return
        if time.time() > deadline:
            raise AssertionError(f"{name} is {got}, waited for {want}")
        time.sleep(0.05)


def raw_post(node, path, body):
    """POST; returns (status, headers dict lower-cased, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, headers, data


def check_503(status, headers, data):
    assert status == 503, (status, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert headers.get("retry-after") == "1", headers
    err = json.loads(data)["error"]
    assert err["type"] == "ServiceUnavailableError"
    assert err["code"] == 503
    assert "--max-queued-requests" in err["message"] and "limit of 2" in err["message"], err["message"]


class LongStream:
    """A streamed completion that runs until closed: it holds the only running slot."""

    def __init__(self, node):
        self.conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
        body = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 1800, "ignore_eos": True,
                "stream": True}
        self.conn.request("POST", "/v1/completions", body=json.dumps(body),
                          headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        line = self.resp.readline()  # the first token: the request runs
        assert line.startswith(b"data: {"), line

    def close(self):
        self.conn.sock.close()
        self.conn.close()


def test_full_queue_refuses_with_503(node, proxy):
    m0 = wait_idle(node.url)
    free0 = m0["pdserve:kv_free_blocks"]
    rej0 = m0.get("pdserve:num_requests_rejected_total", 0.0)
    c = client(node)

    longs = [LongStream(node), LongStream(node)]  # both step slots are taken
    try:
        wait_metric(node, "pdserve:num_sequences_queued", 0)
        # two plain requests fill the queue; they complete once the streams leave
        queued = [None, None]

        def run_queued(i):
            queued[i] = c.completions.create(model="smol", prompt="Hello", max_tokens=4)
        ts = [threading.Thread(target=run_queued, args=(0,))]
        ts[0].start()
        wait_metric(node, "pdserve:num_sequences_queued", 1)
        # one sequence waits: n=2 would make three, over the limit of two
        check_503(*raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2, "n": 2}))
        ts.append(threading.Thread(target=run_queued, args=(1,)))
        ts[1].start()
        wait_metric(node, "pdserve:num_sequences_queued", 2)

        refused = 1
        # the openai client: completions and chat
        for call in (lambda: c.completions.create(model="smol", prompt="Hi", max_tokens=2),
                     lambda: c.chat.completions.create(model="smol", max_tokens=2,
                                                       messages=[{"role": "user", "content": "Hi"}]),
                     lambda: c.completions.create(model="smol", prompt="Hi", max_tokens=2, stream=True)):
            with pytest.raises(openai.InternalServerError) as ei:
                r = call()
                list(r)  # a stream would only fail while iterating
            e = ei.value
            assert e.status_code == 503
            assert e.response.headers.get("retry-after") == "1"
            assert e.body["type"] == "ServiceUnavailableError", e.body
            assert "--max-queued-requests" in e.body["message"]
            refused += 1
        # raw HTTP: plain and streamed (a plain JSON 503, not an SSE stream), both routes
        for path, body in (("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                           ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                                                     "stream_options": {"include_usage": True}}),
                           ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2})):
            check_503(*raw_post(node, path, dict(body, model="smol")))
            refused += 1
        # through the proxy: the node's 503 and its error JSON reach the client (one
        # node, so no retry elsewhere), plain and streamed
        for body in ({"prompt": "Hi", "max_tokens": 2}, {"prompt": "Hi", "max_tokens": 2, "stream": True}):
            st, headers, data = raw_post(proxy, "/v1/completions", dict(body, model="smol"))
            assert st == 503, (st, data[:300])
            assert headers.get("retry-after") == "1", headers  # the node's hint, relayed
            err = json.loads(data)["error"]
            assert err["type"] == "ServiceUnavailableError" and "--max-queued-requests" in err["message"], err
            refused += 1
        # bad input is still a 400, not a 503: validation comes first
        st, _, data = raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": -1})
        assert st == 400, data
        # the queue is as it was: nothing refused holds a place
        assert node_metrics(node.url)["pdserve:num_sequences_queued"] == 2
        m = node_metrics(node.url)
        assert m["pdserve:num_requests_rejected_total"] - rej0 == refused
        assert m["vllm:num_requests_running"] == 2
    finally:
        for s in longs:  # the streams leave: they are aborted and the queued requests run
            s.close()
    for t in ts:
        t.join(timeout=300)
        assert not t.is_alive()
    for r in queued:
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4

    m = wait_idle(node.url)
    assert m["pdserve:kv_free_blocks"] == free0
    assert m["pdserve:num_sequences_queued"] == 0
    # recovery: the next requests work, plain and streamed
    r = c.completions.create(model="smol", prompt="Hello", max_tokens=3)
    assert r.choices[0].finish_reason in ("length", "stop")
    chunks = list(c.chat.completions.create(model="smol", max_tokens=3, stream=True,
                                            messages=[{"role": "user", "content": "Hi"}]))
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_burst_each_request_completes_or_gets_503(node):
    m0 = wait_idle(node.url)
    free0 = m0["pdserve:kv_free_blocks"]
    rej0 = m0.get("pdserve:num_requests_rejected_total", 0.0)
    results = [None] * 24

    def one(i):
        stream = i % 2 == 1
        body = {"model": "smol", "prompt": f"Count to ten: {i}", "max_tokens": 6, "ignore_eos": True}
        if stream:
            body["stream"] = True
        st, headers, data = raw_post(node, "/v1/completions", body)
        results[i] = (stream, st, headers, data)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    ok = refused = 0
    for stream, st, headers, data in results:
        if st == 503:
            check_503(st, headers, data)
            refused += 1
            continue
        assert st == 200, (st, data[:300])
        ok += 1
        if stream:
            assert headers["content-type"].startswith("text/event-stream")
            events = data.decode().split("\n\n")
            assert events[-2] == "data: [DONE]"
            last = json.loads(events[-3][6:])
            assert last["choices"][0]["finish_reason"] == "length"
        else:
            assert json.loads(data)["usage"]["completion_tokens"] == 6
    assert ok >= 1
    m = wait_idle(node.url)
    assert m["pdserve:num_requests_rejected_total"] - rej0 == refused
    assert m["pdserve:kv_free_blocks"] == free0
    assert m["pdserve:num_sequences_queued"] == 0
    st, _, data = raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hello", "max_tokens": 2})
    assert st == 200, data


def test_n_over_max_num_seqs_is_400(node):
    """A group runs its n sequences in one step: n over --max-num-seqs can never run.
    It is a 400 now, checked before the queue (it was accepted, the step failed, every
    choice ended with finish_reason "error", and freeing the failed batch was a use
    after free)."""
    wait_idle(node.url)
    st, _, data = raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2, "n": 3})
    assert st == 400, data
    err = json.loads(data)["error"]
    assert "--max-num-seqs 2" in err["message"] and err["type"] == "BadRequestError", err
    assert err["param"] == "n"
    st, _, data = raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 3, "n": 2})
    assert st == 200, data
    assert [c["index"] for c in json.loads(data)["choices"]] == [0, 1]
    assert node_metrics(node.url)["pdserve:num_sequences_queued"] == 0
    st, _, data = raw_post(node, "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
    assert st == 200, data


def test_bad_limit_refused_at_start(model_path):
    p = subprocess.run([binary("pdserve-decode"), "--model", model_path, "--max-queued-requests", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "--max-queued-requests" in p.stderr

"""The bad-input suite of test_bad_input.py through pdserve-proxy in front of a real
prefill + decode pair (KV over UCX): every bad request gets the same 4xx status and
OpenAI error JSON as from a node (the proxy forwards the node's answer or gives its own
for what it checks itself), a normal split request works after every ten, and after each
case no request runs anywhere and every KV block of both nodes is free again (no lease
left behind by a refused decode leg)."""
import json
import time

import pytest

import test_bad_input as bi
from pdtest import Node, free_port, start_node, wait_http

NODE_ARGS = ["--served-model-name", "smol", "--max-logprobs", str(bi.MAX_LOGPROBS), "--max-model-len", str(bi.MAX_LEN)]


def kv_node(tmp_path_factory, model_path, name, role):
    cfg = {"kv_connector": "UcxConnector", "kv_role": role, "kv_port": free_port(),
           "kv_connector_extra_config": {"lease_ttl_s": 30}}
    return start_node(tmp_path_factory, model_path, NODE_ARGS + ["--kv-transfer-config", json.dumps(cfg)], name=name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_path):
    p = kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer")
    d = kv_node(tmp_path_factory, model_path, "pdserve-decode", "kv_consumer")
    port = free_port()
    log = str(tmp_path_factory.mktemp("proxy") / "proxy.log")
    px = Node("pdserve-proxy", ["--prefill", f"127.0.0.1:{p.port}", "--decode", f"127.0.0.1:{d.port}"], port, log)
    wait_http(px.url + "/health", proc=px.proc, timeout=30)
    px.free_start = None
    yield px, p, d
    px.proc.terminate()
    px.proc.wait(timeout=30)
    assert p.stop() == 0
    assert d.stop() == 0


def nodes_clean(p, d, start):
    deadline = time.time() + 15
    while True:
        now = []
        for n in (p, d):
            m = bi.metrics(n)
            now.append((m["vllm:num_requests_running"], m["vllm:num_requests_waiting"],
                        m.get("pdserve:kv_held_requests", 0), m["pdserve:kv_free_blocks"]))
        if [x[3] for x in now] == list(start) and all(x[:3] == (0, 0, 0) for x in now):
            return
        assert time.time() < deadline, (now, start)
        time.sleep(0.05)


def settled_free(p, d):
    """Both nodes' free-block counts once nothing runs, waits or is held and the counts
    read the same twice: the client has [DONE] a moment before the decode node gives
    the request's blocks back, so a count read at once can be short."""
    last, deadline = None, time.time() + 15
    while True:
        now = []
        for n in (p, d):
            m = bi.metrics(n)
            now.append((m["vllm:num_requests_running"], m["vllm:num_requests_waiting"],
                        m.get("pdserve:kv_held_requests", 0), m["pdserve:kv_free_blocks"]))
        if now == last and all(x[:3] == (0, 0, 0) for x in now):
            return tuple(x[3] for x in now)
        assert time.time() < deadline, now
        last = now
        time.sleep(0.2)


@pytest.mark.parametrize("cid,method,path,body,status,param,msg", bi.CASES, ids=[c[0] for c in bi.CASES])
def test_bad_request_through_proxy(cluster, cid, method, path, body, status, param, msg):
    px, p, d = cluster
    if px.free_start is None:
        bi.normal_request_ok(px)
        px.free_start = settled_free(p, d)
    st, payload = bi.request(px, method, path, body)
    bi.check_error(st, payload, status, param, msg)
    idx = [c[0] for c in bi.CASES].index(cid)
    if idx % 10 == 9 or idx == len(bi.CASES) - 1:
        bi.normal_request_ok(px)
    nodes_clean(p, d, px.free_start)


def test_still_serving_through_proxy_at_the_end(cluster):
    px, p, d = cluster
    bi.normal_request_ok(px)
    st, _ = bi.request(px, "GET", "/health")
    assert st == 200

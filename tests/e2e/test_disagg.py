"""Disaggregated prefill/decode between two real nodes (pdserve-prefill as kv_producer,
pdserve-decode as kv_consumer) over UcxConnector on loopback, driven with raw HTTP exactly
as vLLM's disaggregation proxy drives vLLM (NixlConnector protocol): prefill leg with
max_tokens 1 and {"do_remote_decode": true, ...null}, then the decode leg with the
prefill's kv_transfer_params.  Outputs are compared with a plain single node; after every
scenario both nodes' free KV blocks return to their start."""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from pdtest import binary, free_port, start_node, wait_idle

PROMPTS = [
    "Once upon a time in a land far away there lived a wise old king who had three daughters. "
    "The eldest was proud, the second was clever, and the youngest was kind. One day the king called them",
    "The history of the Roman Empire is long and complicated. " * 6,
    # long: spans many blocks (about 600 tokens)
    " ".join(f"Item {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} box holds {i * 7 % 13} stones."
             for i in range(40)) + " Now count the stones in the blue boxes:",
    "Hi",  # shorter than one block: computed on the decode node, the lease only released
]

PREFILL_REQ_KV = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                  "remote_block_ids": None, "remote_host": None, "remote_port": None}


def kv_config(role, port, **extra):
    cfg = {"kv_connector": "UcxConnector", "kv_role": role, "kv_ip": "127.0.0.1", "kv_port": port,
           "kv_buffer_device": "cpu", "kv_connector_extra_config": {"control_timeout_s": 2}}
    policy = extra.pop("policy", None)
    if policy:
        cfg["kv_load_failure_policy"] = policy
    cfg["kv_connector_extra_config"].update(extra)
    return json.dumps(cfg)


def post(node, path, body, timeout=120):
    req = urllib.request.Request(node.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read().decode()
        status = e.code
    if body.get("stream") and status == 200:
        return status, [json.loads(line[6:]) for line in raw.splitlines()
                        if line.startswith("data: ") and line != "data: [DONE]"]
    return status, json.loads(raw)


def metrics(node):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        return r.read().decode()


def metric(node, name, label=None):
    total, found = 0.0, False
    for line in metrics(node).splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} {label or ''} not in /metrics"
    return total


def free_blocks(node):
    return metric(node, "pdserve:kv_free_blocks")


def settled_free_blocks(node):
    """The free-block count once nothing runs, waits or holds a lease (earlier tests on a
    shared node may leave a 30 s lease behind)."""
    return wait_idle(node.url)["pdserve:kv_free_blocks"]


def wait_free(node, want, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if free_blocks(node) == want:
            return
        time.sleep(0.1)
    assert free_blocks(node) == want, f"{node.url}: free blocks {free_blocks(node)}, want {want}"


def start_kv_node(tmp_path_factory, model_path, name, role, kv_port, extra=(), **kw):
    return start_node(tmp_path_factory, model_path,
                      ["--served-model-name", "smol", "--kv-transfer-config", kv_config(role, kv_port, **kw)]
                      + list(extra), name=name)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, model_path):
    node = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol"])
    yield node
    node.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, model_path):
    p = start_kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer", free_port())
    d = start_kv_node(tmp_path_factory, model_path, "pdserve-decode", "kv_consumer", free_port())
    yield p, d
    rc_d, rc_p = d.stop(), p.stop()
    assert rc_d == 0 and rc_p == 0, (d.logtext()[-2000:], p.logtext()[-2000:])


@pytest.fixture(scope="module")
def fail_decode(tmp_path_factory, model_path):
    d = start_kv_node(tmp_path_factory, model_path, "pdserve-decode", "kv_consumer", free_port(), policy="fail")
    yield d
    d.stop()


@pytest.fixture
def balanced(pair):
    """Both nodes' free blocks after the test equal those before it."""
    p, d = pair
    start = (settled_free_blocks(p), settled_free_blocks(d))
    yield p, d
    wait_free(p, start[0])
    wait_free(d, start[1])


def prefill_leg(p, body):
    b = dict(body, max_tokens=1, stream=False, kv_transfer_params=PREFILL_REQ_KV)
    b.pop("stream_options", None)
    if "max_completion_tokens" in b:
        b["max_completion_tokens"] = 1
    status, r = post(p, "/v1/chat/completions" if "messages" in body else "/v1/completions", b)
    assert status == 200, r
    kv = r["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False
    assert kv["remote_host"] == "127.0.0.1" and kv["tp_size"] == 1 and kv["remote_request_id"]
    assert isinstance(kv["remote_port"], int) and isinstance(kv["remote_engine_id"], str)
    return kv


def decode_leg(d, body, kv):
    return post(d, "/v1/chat/completions" if "messages" in body else "/v1/completions",
                dict(body, kv_transfer_params=kv))


def text_of(r, chat, i=0):
    return r["choices"][i]["message"]["content"] if chat else r["choices"][i]["text"]


def stream_text(chunks, chat):
    out = ""
    for ch in chunks:
        assert "error" not in ch, ch
        for c in ch.get("choices", []):
            out += (c["delta"].get("content") or "") if chat else c["text"]
    return out


def tokens(node, prompt):
    status, r = post(node, "/tokenize", {"prompt": prompt})
    assert status == 200
    return r["count"]


BLOCK = 16


def test_completions_match_single_node(balanced, ref):
    p, d = balanced
    for prompt in PROMPTS:
        body = {"model": "smol", "prompt": prompt, "max_tokens": 24, "temperature": 0}
        bytes0 = metric(d, "vllm:nixl_bytes_transferred")
        computed0 = metric(d, "vllm:prompt_tokens_total")
        kv = prefill_leg(p, body)
        n = tokens(d, prompt)
        assert len(kv["remote_block_ids"]) == (n + BLOCK - 1) // BLOCK
        status, r = decode_leg(d, body, kv)
        assert status == 200, r
        _, want = post(ref, "/v1/completions", body)
        assert text_of(r, False) == text_of(want, False), prompt[:40]
        assert r["usage"] == want["usage"]
        assert r["kv_transfer_params"] is None  # no load failure
        pulled = metric(d, "vllm:nixl_bytes_transferred") - bytes0
        # the blocks of prompt tokens [0, n - 1) the decode node did not cache, the
        # partial last block whole; only the last prompt token is computed there
        assert pulled % 737280 == 0 and pulled <= ((n - 1 + BLOCK - 1) // BLOCK) * 737280
        if n - 1 < BLOCK:
            assert pulled == 0  # a prompt shorter than one block + 1 token is computed whole
        if prompt == PROMPTS[2]:
            # the long prompt shares nothing with the others: every block moves,
            # the partial one included
            assert (n - 1) % BLOCK != 0
            assert pulled == ((n - 1 + BLOCK - 1) // BLOCK) * 737280
            # and the decode node computed the last prompt token only
            assert metric(d, "vllm:prompt_tokens_total") - computed0 == 1


def test_eos_first_token_still_gives_params(balanced):
    """vLLM drops the params when the prefill's one token is EOS; we do not."""
    p, d = balanced
    body = {"model": "smol", "prompt": "Say nothing at all, not even one word, to this long question. " * 3,
            "max_tokens": 5, "temperature": 0, "logit_bias": {"2": 100}}  # 2 = eos
    b = dict(body, max_tokens=1, kv_transfer_params=PREFILL_REQ_KV)
    status, r = post(p, "/v1/completions", b)
    assert status == 200 and r["choices"][0]["finish_reason"] == "stop", r
    kv = r["kv_transfer_params"]
    assert kv and kv["remote_block_ids"]
    status, r = decode_leg(d, body, kv)
    assert status == 200 and r["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_and_not(balanced, ref):
    p, d = balanced
    msgs = [{"role": "user", "content": "Write two sentences about the sea and the wind over the harbour "
                                        "on a cold winter morning, and mention a lighthouse."}]
    body = {"model": "smol", "messages": msgs, "max_tokens": 20, "temperature": 0}
    _, want = post(ref, "/v1/chat/completions", body)
    kv = prefill_leg(p, body)
    status, r = decode_leg(d, body, kv)
    assert status == 200 and text_of(r, True) == text_of(want, True)
    sbody = dict(body, stream=True, stream_options={"include_usage": True},
                 messages=msgs + [{"role": "assistant", "content": "The sea."},
                                  {"role": "user", "content": "Again, please, with more detail about the light."}])
    _, swant = post(ref, "/v1/chat/completions", {k: v for k, v in sbody.items()
                                                  if k not in ("stream", "stream_options")})
    kv = prefill_leg(p, sbody)
    status, chunks = decode_leg(d, sbody, kv)
    assert status == 200 and stream_text(chunks, True) == text_of(swant, True)
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    # completions, streamed
    cbody = {"model": "smol", "prompt": PROMPTS[0] + " to dinner.", "max_tokens": 16, "temperature": 0,
             "stream": True}
    _, cwant = post(ref, "/v1/completions", dict(cbody, stream=False))
    kv = prefill_leg(p, cbody)
    status, chunks = decode_leg(d, cbody, kv)
    assert status == 200 and stream_text(chunks, False) == text_of(cwant, False)


def test_n_greater_than_one_on_decode(balanced, ref):
    p, d = balanced
    body = {"model": "smol", "prompt": PROMPTS[1] + " And then", "max_tokens": 12, "temperature": 0, "n": 3}
    kv = prefill_leg(p, body)
    status, r = decode_leg(d, body, kv)
    assert status == 200 and len(r["choices"]) == 3
    _, want = post(ref, "/v1/completions", dict(body, n=1))
    assert all(c["text"] == want["choices"][0]["text"] for c in r["choices"])


def test_prefix_hit_on_decode_pulls_nothing(balanced):
    p, d = balanced
    body = {"model": "smol", "prompt": "A fresh prompt for the prefix test: " + "alpha beta gamma delta " * 12,
            "max_tokens": 8, "temperature": 0}
    kv = prefill_leg(p, body)
    s1, r1 = decode_leg(d, body, kv)
    assert s1 == 200
    bytes1 = metric(d, "vllm:nixl_bytes_transferred")
    released = metric(p, "pdserve:kv_leases_released_total")
    kv = prefill_leg(p, body)
    s2, r2 = decode_leg(d, body, kv)
    assert s2 == 200 and text_of(r2, False) == text_of(r1, False)
    assert metric(d, "vllm:nixl_bytes_transferred") == bytes1  # nothing moved
    deadline = time.time() + 10
    while metric(p, "pdserve:kv_leases_released_total") < released + 1 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(p, "pdserve:kv_leases_released_total") == released + 1  # but the lease was let go


def test_decode_node_serves_plain_requests(balanced, ref):
    _, d = balanced
    body = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    s, r = post(d, "/v1/completions", body)
    assert s == 200 and r["choices"][0]["text"] == post(ref, "/v1/completions", body)[1]["choices"][0]["text"]


def test_bad_transfer_params_refused(balanced, ref):
    p, d = balanced
    good = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [0],
            "remote_engine_id": "x", "remote_request_id": "r", "remote_host": "127.0.0.1",
            "remote_port": 1, "tp_size": 1}
    bad = [
        (d, dict(good, evil=1)),
        (d, dict(good, remote_block_ids=[-1])),
        (d, dict(good, remote_block_ids="0")),
        (d, dict(good, remote_port=70000)),
        (d, dict(good, tp_size=2)),
        (d, {k: v for k, v in good.items() if k != "remote_host"}),
        (d, dict(good, do_remote_decode=True)),
        (d, PREFILL_REQ_KV),            # the decode node does not produce
        (p, good),                      # the prefill node does not consume
        (p, dict(PREFILL_REQ_KV, remote_host="10.0.0.1")),
        (ref, PREFILL_REQ_KV),          # no --kv-transfer-config at all
        (ref, good),
    ]
    for node, kv in bad:
        s, r = post(node, "/v1/completions", {"model": "smol", "prompt": "hello", "max_tokens": 2,
                                             "kv_transfer_params": kv})
        assert s == 400, (kv, r)
        assert "kv_transfer_params" in r["error"]["message"], r
    s, r = post(d, "/v1/completions", {"model": "smol", "prompt": "hello", "max_tokens": 2,
                                      "kv_transfer_params": []})
    assert s == 400
    # the nodes still work
    s, r = post(d, "/v1/completions", {"model": "smol", "prompt": "hello", "max_tokens": 2})
    assert s == 200


def test_lease_expires_when_decode_never_comes(tmp_path_factory, model_path):
    p = start_kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer", free_port(), lease_ttl_s=5)
    try:
        start = free_blocks(p)
        kv = prefill_leg(p, {"model": "smol", "prompt": PROMPTS[2], "max_tokens": 4, "temperature": 0})
        deadline = time.time() + 3  # the per-step metrics snapshot may trail the answer
        while free_blocks(p) >= start and time.time() < deadline:
            time.sleep(0.02)
        assert free_blocks(p) < start
        assert metric(p, "pdserve:kv_blocks_held") == len(kv["remote_block_ids"])
        assert metric(p, "pdserve:kv_held_requests") == 1
        wait_free(p, start, timeout=30)
        assert metric(p, "pdserve:kv_lease_expiries_total") == 1
        assert metric(p, "pdserve:kv_held_requests") == 0
    finally:
        assert p.stop() == 0


def kill_prefill_before_pull(tmp_path_factory, model_path, body):
    p = start_kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer", free_port())
    kv = prefill_leg(p, body)
    p.stop(sig=signal.SIGKILL)
    return kv


def test_prefill_killed_recompute(tmp_path_factory, model_path, pair, ref):
    _, d = pair
    start = settled_free_blocks(d)
    body = {"model": "smol", "prompt": "Killed prefill: " + PROMPTS[0], "max_tokens": 16, "temperature": 0}
    kv = kill_prefill_before_pull(tmp_path_factory, model_path, body)
    failures = metric(d, "pdserve:kv_load_failures_total", 'policy="recompute"')
    s, r = decode_leg(d, body, kv)
    assert s == 200, r
    assert r["kv_transfer_params"] == {"kv_load_failure": "recomputed"}
    assert text_of(r, False) == text_of(post(ref, "/v1/completions", body)[1], False)
    assert metric(d, "pdserve:kv_load_failures_total", 'policy="recompute"') == failures + 1
    assert metric(d, "vllm:nixl_num_failed_transfers") >= 1
    assert "recomput" in d.logtext()
    wait_free(d, start)


def test_prefill_killed_fail_policy(tmp_path_factory, model_path, fail_decode):
    d = fail_decode
    start = settled_free_blocks(d)
    body = {"model": "smol", "prompt": "Fail policy: " + PROMPTS[0], "max_tokens": 16, "temperature": 0}
    kv = kill_prefill_before_pull(tmp_path_factory, model_path, body)
    s, r = decode_leg(d, body, kv)
    assert s == 503, r
    assert "KV transfer" in r["error"]["message"]
    assert metric(d, "pdserve:kv_load_failures_total", 'policy="fail"') == 1
    # streamed: an SSE error event, then [DONE]
    kv = kill_prefill_before_pull(tmp_path_factory, model_path, body)
    req = urllib.request.Request(d.url + "/v1/completions",
                                 data=json.dumps(dict(body, stream=True, kv_transfer_params=kv)).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read().decode()
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "KV transfer" in json.loads(events[-2])["error"]["message"]
    wait_free(d, start)


def test_incompatible_block_size_refused(tmp_path_factory, model_path, pair, ref):
    _, d = pair
    start = settled_free_blocks(d)
    p32 = start_kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer", free_port(),
                        extra=["--block-size", "32"], lease_ttl_s=3)
    try:
        p_start = free_blocks(p32)
        body = {"model": "smol", "prompt": "Block sizes differ: " + PROMPTS[1], "max_tokens": 8, "temperature": 0}
        kv = prefill_leg(p32, body)
        s, r = decode_leg(d, body, kv)
        assert s == 200 and r["kv_transfer_params"] == {"kv_load_failure": "recomputed"}
        assert text_of(r, False) == text_of(post(ref, "/v1/completions", body)[1], False)
        log = d.logtext()
        assert "incompatible" in log and "block_size" in log, log[-3000:]
        assert metric(p32, "pdserve:kv_handshakes_refused_total") >= 1
        wait_free(p32, p_start, timeout=40)  # the lease ends (aborted or expired)
    finally:
        p32.stop()
    wait_free(d, start)


def test_wrong_role_and_bad_config_exit_2(model_path, tmp_path):
    cases = [
        ("pdserve-prefill", kv_config("kv_consumer", free_port()), "kv_producer"),
        ("pdserve-prefill", kv_config("kv_both", free_port()), "kv_producer"),
        ("pdserve-decode", kv_config("kv_producer", free_port()), "kv_consumer"),
        ("pdserve-decode", '{"kv_connector": "UcxConnector", "kv_role": "sideways"}', "kv_role"),
        ("pdserve-decode", '{"kv_connector": "NoSuchConnector", "kv_role": "kv_consumer"}', "kv_connector"),
    ]
    for name, cfg, word in cases:
        r = subprocess.run([binary(name), "--model", model_path, "--port", str(free_port()),
                            "--kv-transfer-config", cfg], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (name, cfg, r.stderr[-2000:])
        err = r.stderr.strip().splitlines()
        assert err and word in err[-1], (name, cfg, err[-3:])


def test_ucx_env_exported_for_the_node(pair):
    """The node re-executes itself with UCX_MEM_MMAP_HOOK_MODE=none when it was unset."""
    p, _ = pair
    with open(f"/proc/{p.proc.pid}/environ", "rb") as f:
        env = f.read().split(b"\0")
    assert b"UCX_MEM_MMAP_HOOK_MODE=none" in env or os.environ.get("UCX_MEM_MMAP_HOOK_MODE")


def test_client_leaves_while_pulling(tmp_path_factory, model_path, pair):
    """A decode request aborted while its pull is in flight answers at once but keeps its
    blocks until the pull reports; nothing leaks on either node."""
    _, d = pair
    start = settled_free_blocks(d)
    p = start_kv_node(tmp_path_factory, model_path, "pdserve-prefill", "kv_producer", free_port(), lease_ttl_s=3)
    try:
        p_start = free_blocks(p)
        body = {"model": "smol", "prompt": "Frozen prefill: " + PROMPTS[2], "max_tokens": 8, "temperature": 0}
        kv = prefill_leg(p, body)
        failed = metric(d, "vllm:nixl_num_failed_transfers")
        loads = metric(d, "pdserve:kv_load_failures_total")
        p.proc.send_signal(signal.SIGSTOP)  # the pull's handshake now waits (control_timeout_s 2)
        try:
            with pytest.raises(Exception):
                post(d, "/v1/completions", dict(body, kv_transfer_params=kv), timeout=0.7)
            wait_free(d, start, timeout=15)
            # the pull reported its failure after the abort: counted as a failed transfer,
            # not as a load failure (nobody recomputed)
            deadline = time.time() + 10
            while metric(d, "vllm:nixl_num_failed_transfers") == failed and time.time() < deadline:
                time.sleep(0.1)
            assert metric(d, "vllm:nixl_num_failed_transfers") == failed + 1
            assert metric(d, "pdserve:kv_load_failures_total") == loads
            assert "client disconnected" in d.logtext()
        finally:
            p.proc.send_signal(signal.SIGCONT)
        wait_free(p, p_start, timeout=15)
        # the decode node still serves
        s, r = post(d, "/v1/completions", {"model": "smol", "prompt": "hello", "max_tokens": 2})
        assert s == 200
    finally:
        assert p.stop() == 0


def test_refused_decode_request_releases_the_lease(balanced):
    """A decode request refused before it reaches the engine lets the prefill's lease go
    at once (the pair's lease_ttl_s is 30 s; this waits 15)."""
    p, d = balanced
    start = settled_free_blocks(p)
    for bad in ({"model": "no-such-model"}, {"max_tokens": 5000}):
        body = {"model": "smol", "prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0}
        kv = prefill_leg(p, body)
        # (the metrics are the engine's per-step snapshot, which may trail the answer)
        deadline = time.time() + 10
        while free_blocks(p) >= start and time.time() < deadline:
            time.sleep(0.02)
        assert free_blocks(p) < start
        s, r = decode_leg(d, dict(body, **bad), kv)
        assert s in (400, 404), r
        wait_free(p, start, timeout=15)


def test_shared_storage_connector(tmp_path_factory, model_path, ref, tmp_path):
    """The same protocol over SharedStorageConnector (files): same output, no files left."""
    store = tmp_path / "kv"
    store.mkdir()

    def cfg(role):
        return json.dumps({"kv_connector": "SharedStorageConnector", "kv_role": role, "kv_ip": "127.0.0.1",
                           "kv_port": free_port(), "kv_buffer_device": "cpu",
                           "kv_connector_extra_config": {"shared_storage_path": str(store)}})
    p = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--kv-transfer-config",
                                                  cfg("kv_producer")], name="pdserve-prefill")
    d = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--kv-transfer-config",
                                                  cfg("kv_consumer")], name="pdserve-decode")
    try:
        starts = free_blocks(p), free_blocks(d)
        body = {"model": "smol", "prompt": "Files: " + PROMPTS[0], "max_tokens": 12, "temperature": 0}
        kv = prefill_leg(p, body)
        s, r = decode_leg(d, body, kv)
        assert s == 200 and r["kv_transfer_params"] is None
        assert text_of(r, False) == text_of(post(ref, "/v1/completions", body)[1], False)
        assert metric(d, "vllm:nixl_bytes_transferred") > 0
        wait_free(p, starts[0])
        wait_free(d, starts[1])
        assert not any(f.is_file() for f in store.rglob("*"))
    finally:
        assert d.stop() == 0 and p.stop() == 0

"""A pdserve cluster across three "hosts" (network namespaces): proxy, prefill and
decode, joined by a bridge for HTTP, with a separate veth pair between the prefill and
decode hosts that carries the KV blocks (UCX over tcp, told to use only that link).
The test process is the client in the root namespace, talking to the proxy with the
official openai client.

Checks: chat and completions, streamed and not, equal to a single node under greedy
sampling, with the blocks really crossing the KV link (bytes on the link and the decode
node's vllm:nixl_bytes_transferred); the KV link cut while a request's blocks are being
pulled (rate-limited with tc so the pull takes seconds): with kv_load_failure_policy
recompute the client still gets the right answer, with fail a clear error, never a hang;
the next request after the link is back moves its KV again; a client that leaves during
the pull. After every scenario both nodes' free-block counts are back to their start.

Needs root (ip netns, veth, bridge, tc); skips with the reason otherwise."""
import http.client
import json
import threading
import time

import openai
import pytest

from pdtest import NODE_ARGS, binary, start_node
from cluster_util import NsNet, NsNode, free_blocks, kv_config, metric, netns_unavailable, post, wait_free, \
    wait_until

PROXY_PORT, PREFILL_PORT, DECODE_PORT, FAIL_DECODE_PORT, FAIL_PROXY_PORT = 8000, 8100, 8200, 8201, 8001
KV_PORT = 14579
BLOCK_BYTES = 737280  # one 16-token block of the default model, f32 KV on the CPU backend


def long_prompt(tag, items=28):
    """About 15 tokens per item; a distinct tag per test keeps every prefix cache cold."""
    return f"{tag}. " + " ".join(f"Item {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} box holds "
                                 f"{i * 7 % 13} stones." for i in range(items)) + " Now count the stones:"


@pytest.fixture(scope="module")
def net():
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    n = NsNet()
    n.up()
    yield n
    n.down()


def node_env(net, host):
    return {"UCX_TLS": "tcp", "UCX_NET_DEVICES": net.kv_dev[host], "UCX_MEM_MMAP_HOOK_MODE": "none"}


@pytest.fixture(scope="module")
def cluster(net, model_path, tmp_path_factory):
    """Prefill, decode (recompute) and proxy, each in its own namespace; plus a decode node
    with kv_load_failure_policy fail and a second proxy in front of it."""
    for b in ("pdserve-prefill", "pdserve-decode", "pdserve-proxy"):
        binary(b)  # skips when not built
    logs = tmp_path_factory.mktemp("netns")
    common = ["--model", model_path, "--served-model-name", "smol"] + NODE_ARGS
    started = []

    def start(host, name, args, port, env=None):
        n = NsNode(net, host, name, args, port, str(logs / f"{name}-{port}.log"), env=env)
        started.append(n)
        return n

    try:
        pre = start("prefill", "pdserve-prefill", common + [
            "--kv-transfer-config", kv_config("kv_producer", net.kv_ip["prefill"], KV_PORT, lease_ttl_s=5)],
            PREFILL_PORT, node_env(net, "prefill"))
        dec = start("decode", "pdserve-decode", common + [
            "--kv-transfer-config", kv_config("kv_consumer", net.kv_ip["decode"], 0, policy="recompute",
                                              transfer_timeout_s=20)],
            DECODE_PORT, node_env(net, "decode"))
        dec_fail = start("decode", "pdserve-decode", common + [
            "--kv-transfer-config", kv_config("kv_consumer", net.kv_ip["decode"], 0, policy="fail",
                                              transfer_timeout_s=20)],
            FAIL_DECODE_PORT, node_env(net, "decode"))
        px = start("proxy", "pdserve-proxy", ["--prefill", f"{net.ip['prefill']}:{PREFILL_PORT}",
                                              "--decode", f"{net.ip['decode']}:{DECODE_PORT}"], PROXY_PORT)
        px_fail = start("proxy", "pdserve-proxy", ["--prefill", f"{net.ip['prefill']}:{PREFILL_PORT}",
                                                   "--decode", f"{net.ip['decode']}:{FAIL_DECODE_PORT}"],
                      FAIL_PROXY_PORT)
    except Exception:
        for n in started:
            n.stop()
        raise
    yield {"prefill": pre, "decode": dec, "decode_fail": dec_fail, "proxy": px, "proxy_fail": px_fail}
    net.kv_rate(None)
    net.kv_link(True)
    rcs = {n.url: n.stop() for n in reversed(started)}
    assert all(rc == 0 for rc in rcs.values()), rcs


@pytest.fixture(scope="module")
def ref(tmp_path_factory, model_path):
    node = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol"])
    yield node
    node.stop()


@pytest.fixture
def settled(cluster, net):
    """Every node's free blocks after the test equal those before it; the KV link is
    restored even when the test failed half-way."""
    nodes = [cluster[k] for k in ("prefill", "decode", "decode_fail")]
    start = [free_blocks(n) for n in nodes]
    yield cluster
    net.kv_rate(None)
    net.kv_link(True)
    net.kv_blackhole(False)
    for n, s in zip(nodes, start):
        wait_free(n, s, timeout=40)
    for px in (cluster["proxy"], cluster["proxy_fail"]):
        assert wait_until(lambda: metric(px, "pdserve_proxy_requests_in_flight") == 0, 30), px.url


def oai(node, **kw):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0, timeout=kw.pop("timeout", 120))


def test_openai_client_across_hosts(settled, ref, net):
    c = settled
    via, direct = oai(c["proxy"]), oai(ref)
    dec = c["decode"]
    bytes0, link0 = metric(dec, "vllm:nixl_bytes_transferred"), net.kv_tx_bytes()
    prompt = long_prompt("Across hosts", items=10)
    kw = dict(model="smol", prompt=prompt, max_tokens=12, temperature=0)
    want = direct.completions.create(**kw)
    got = via.completions.create(**kw)
    assert got.choices[0].text == want.choices[0].text and got.usage == want.usage
    moved = metric(dec, "vllm:nixl_bytes_transferred") - bytes0
    assert moved >= 5 * BLOCK_BYTES, moved
    assert net.kv_tx_bytes() - link0 >= moved  # the blocks crossed the KV link
    # streamed (the decode node's prefix cache holds the prompt now: a new prompt)
    skw = dict(kw, prompt=long_prompt("Streamed across hosts", items=10))
    streamed = "".join(ch.choices[0].text for ch in via.completions.create(stream=True, **skw) if ch.choices)
    assert streamed == direct.completions.create(**skw).choices[0].text
    # chat, not streamed and streamed
    msgs = [{"role": "user", "content": "Write two sentences about three hosts on one network, a proxy, "
                                        "a prefill node and a decode node, passing messages."}]
    ckw = dict(model="smol", messages=msgs, max_tokens=12, temperature=0)
    cwant = direct.chat.completions.create(**ckw).choices[0].message.content
    assert via.chat.completions.create(**ckw).choices[0].message.content == cwant
    smsgs = msgs + [{"role": "assistant", "content": cwant}, {"role": "user", "content": "And a third one."}]
    swant = direct.chat.completions.create(**dict(ckw, messages=smsgs)).choices[0].message.content
    sgot = "".join(ch.choices[0].delta.content or "" for ch in
                   via.chat.completions.create(stream=True, **dict(ckw, messages=smsgs)) if ch.choices)
    assert sgot == swant
    assert metric(c["proxy"], "pdserve_proxy_routed_total", 'path="split"') >= 4
    assert metric(dec, "pdserve:kv_load_failures_total") == 0


def cut_during_pull(net, threshold, action, how="down"):
    """Rate-limit the KV link, run action() in a thread, cut the link once `threshold`
    bytes crossed it (how: "down" = link down, "blackhole" = every packet silently
    dropped), and return what action returned (it must end by itself)."""
    net.kv_rate("16mbit")  # 2 MB/s: ~18 MB of blocks take ~9 s
    tx0 = net.kv_tx_bytes()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", action()), daemon=True)
    t.start()
    assert wait_until(lambda: net.kv_tx_bytes() - tx0 >= threshold or not t.is_alive(), 120), "no pull began"
    assert t.is_alive(), f"the request ended before the cut: {out}"
    if how == "down":
        net.kv_link(False)
    else:
        net.kv_blackhole(True)
    t_cut = time.time()
    t.join(150)
    assert not t.is_alive(), "the client hangs after the KV link was cut"
    print(f"answer {time.time() - t_cut:.1f} s after the cut ({how})")  # shown with pytest -s
    if how == "down":
        net.kv_link(True)
    else:
        net.kv_blackhole(False)
    net.kv_rate(None)
    return out.get("r")


@pytest.mark.parametrize("how", ["down", "blackhole"])
def test_kv_link_cut_recompute(settled, ref, net, how):
    c = settled
    dec = c["decode"]
    body = {"model": "smol", "prompt": long_prompt(f"Cut link ({how}), recompute"), "max_tokens": 8,
            "temperature": 0}
    fails0 = metric(dec, "pdserve:kv_load_failures_total", 'policy="recompute"')
    status, r = cut_during_pull(net, 2 << 20, lambda: post(c["proxy"].url + "/v1/completions", body, timeout=140),
                                how)
    assert status == 200, r
    assert r["kv_transfer_params"] == {"kv_load_failure": "recomputed"}
    assert r["choices"][0]["text"] == post(ref.url + "/v1/completions", body)[1]["choices"][0]["text"]
    assert metric(dec, "pdserve:kv_load_failures_total", 'policy="recompute"') == fails0 + 1
    # the link is back: the next request's blocks move again
    bytes0 = metric(dec, "vllm:nixl_bytes_transferred")
    body2 = dict(body, prompt=long_prompt(f"After the cut ({how})", items=10))
    status, r = post(c["proxy"].url + "/v1/completions", body2)
    assert status == 200 and r["kv_transfer_params"] is None, r
    assert r["choices"][0]["text"] == post(ref.url + "/v1/completions", body2)[1]["choices"][0]["text"]
    assert metric(dec, "vllm:nixl_bytes_transferred") > bytes0


@pytest.mark.parametrize("stream", [False, True])
def test_kv_link_cut_fail_policy(settled, net, stream):
    c = settled
    dec = c["decode_fail"]
    body = {"model": "smol", "prompt": long_prompt(f"Cut link, fail, stream {stream}"), "max_tokens": 8,
            "temperature": 0, "stream": stream}
    fails0 = metric(dec, "pdserve:kv_load_failures_total", 'policy="fail"')
    status, r = cut_during_pull(net, 2 << 20, lambda: post(c["proxy_fail"].url + "/v1/completions", body,
                                                          timeout=140))
    if stream:
        # the stream began before the failure: one SSE error event (then [DONE]), no text
        assert status == 200 and "KV transfer" in r[-1]["error"]["message"], r
    else:
        assert status == 503 and "KV transfer" in r["error"]["message"], r
    assert metric(dec, "pdserve:kv_load_failures_total", 'policy="fail"') == fails0 + 1
    status, r = post(c["proxy_fail"].url + "/v1/completions", dict(body, prompt=long_prompt(
        f"After the failure {stream}", items=10), stream=False))
    assert status == 200 and r["kv_transfer_params"] is None, r


def test_client_leaves_during_the_pull(settled, net):
    """The client closes its connection while the decode node pulls: both nodes get
    their blocks back (the fixture checks) and the proxy counts the disconnect."""
    c = settled
    px, dec = c["proxy"], c["decode"]
    disc0 = metric(px, "pdserve_proxy_errors_total", 'kind="client_disconnect"')
    body = {"model": "smol", "prompt": long_prompt("The client leaves"), "max_tokens": 8, "temperature": 0,
            "stream": True}
    net.kv_rate("16mbit")
    tx0 = net.kv_tx_bytes()
    conn = http.client.HTTPConnection(px.url.split("//")[1].split(":")[0], px.port, timeout=120)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert wait_until(lambda: net.kv_tx_bytes() - tx0 >= 2 << 20, 120), "no pull began"
    conn.sock.close()
    conn.close()
    assert wait_until(lambda: metric(px, "pdserve_proxy_errors_total", 'kind="client_disconnect"') > disc0, 30)
    assert wait_until(lambda: metric(dec, "vllm:num_requests_running") == 0, 60)
    net.kv_rate(None)
    status, r = post(px.url + "/v1/completions", dict(body, prompt=long_prompt("Next one", items=6), stream=False))
    assert status == 200, r


"""Helpers for the cluster tests (tests/e2e/test_cluster_*.py): a small network of
namespaces ("hosts"), node processes started inside them, metrics and free-block checks.

The namespace network (NsNet):
  - a "front" bridge in the root namespace (10.A.B.254/24) with one veth per host:
    proxy 10.A.B.1, prefill 10.A.B.2, decode 10.A.B.3 (HTTP between them and from the
    test process, which stays in the root namespace like a client on another machine);
  - a direct "kv" veth pair between the prefill and decode hosts (10.A.B+1.1 / .2): the
    KV transfer link. The prefill node's kv_ip is on it and UCX is told to use only it,
    so cutting it (link down, tc) cuts the block transfer but not the HTTP legs.
Every name carries a short random tag, so parallel runs do not collide; cleanup deletes
what was made even when a step failed half-way."""
import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request

from pdtest import binary, wait_http


def run(cmd, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


def netns_unavailable():
    """None when namespaces, veths and bridges can be made here, else the reason."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    tag = f"pdck{os.getpid() % 100000}"
    try:
        p = subprocess.run(["ip", "netns", "add", tag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ip netns: {e}"
    if p.returncode != 0:
        return f"ip netns is not permitted here: {p.stderr.strip()}"
    try:
        p = subprocess.run(["tc", "-n", tag, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit",
                            "burst", "32kb", "latency", "400ms"], capture_output=True, text=True, timeout=10)
        tc_err = None if p.returncode == 0 else p.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        tc_err = str(e)
    subprocess.run(["ip", "netns", "del", tag], capture_output=True, timeout=10)
    if tc_err:
        return f"tc with a tbf qdisc is not available here: {tc_err}"
    p = subprocess.run(["ip", "link", "add", tag, "type", "bridge"], capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        return f"bridges are not permitted here: {p.stderr.strip()}"
    subprocess.run(["ip", "link", "del", tag], capture_output=True, timeout=10)
    return None


class NsNet:
    HOSTS = ("proxy", "prefill", "decode")

    def __init__(self):
        self.tag = "%04x" % random.randrange(0x10000)
        a, b = random.randrange(180, 200), random.randrange(0, 125) * 2
        self.front = f"10.{a}.{b}"
        self.kvnet = f"10.{a}.{b + 1}"
        self.ns = {h: f"pdns{h[:3]}{self.tag}" for h in self.HOSTS}
        self.ip = {h: f"{self.front}.{i + 1}" for i, h in enumerate(self.HOSTS)}
        self.kv_ip = {"prefill": f"{self.kvnet}.1", "decode": f"{self.kvnet}.2"}
        self.bridge = f"pdbr{self.tag}"
        self.kv_dev = {"prefill": f"pdkp{self.tag}", "decode": f"pdkd{self.tag}"}
        self.made_ns, self.made_links = [], []

    def up(self):
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self.made_links.append(self.bridge)
            run(["ip", "addr", "add", f"{self.front}.254/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, h in enumerate(self.HOSTS):
                ns = self.ns[h]
                run(["ip", "netns", "add", ns])
                self.made_ns.append(ns)
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
                outer, inner = f"pdf{i}{self.tag}", f"pdg{i}{self.tag}"
                run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
                self.made_links.append(outer)
                run(["ip", "link", "set", outer, "master", self.bridge])
                run(["ip", "link", "set", outer, "up"])
                run(["ip", "link", "set", inner, "netns", ns])
                run(["ip", "-n", ns, "addr", "add", f"{self.ip[h]}/24", "dev", inner])
                run(["ip", "-n", ns, "link", "set", inner, "up"])
            p, d = self.kv_dev["prefill"], self.kv_dev["decode"]
            run(["ip", "link", "add", p, "type", "veth", "peer", "name", d])
            self.made_links.append(p)
            run(["ip", "link", "set", p, "netns", self.ns["prefill"]])
            run(["ip", "link", "set", d, "netns", self.ns["decode"]])
            for h in ("prefill", "decode"):
                run(["ip", "-n", self.ns[h], "addr", "add", f"{self.kv_ip[h]}/24", "dev", self.kv_dev[h]])
                run(["ip", "-n", self.ns[h], "link", "set", self.kv_dev[h], "up"])
        except Exception:
            self.down()
            raise

    def down(self):
        for ns in self.made_ns:
            run(["ip", "netns", "del", ns], check=False)
        for link in self.made_links:  # veths die with their namespace; the bridge does not
            run(["ip", "link", "del", link], check=False)
        self.made_ns, self.made_links = [], []

    def kv_link(self, up):
        """Set the KV link's decode-side end up or down (the peer loses its carrier too)."""
        run(["ip", "-n", self.ns["decode"], "link", "set", self.kv_dev["decode"], "up" if up else "down"])

    def kv_blackhole(self, on):
        """Silently drop everything on the KV link in both directions (blackhole routes:
        no carrier loss, no ICMP, no socket error: only timeouts can notice)."""
        for here, there in (("prefill", "decode"), ("decode", "prefill")):
            run(["ip", "-n", self.ns[here], "route", "add" if on else "del", "blackhole",
                 f"{self.kv_ip[there]}/32"], check=on)

    def kv_rate(self, rate):
        """Rate-limit what the prefill host sends on the KV link (None: no limit)."""
        ns, dev = self.ns["prefill"], self.kv_dev["prefill"]
        run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        if rate:
            run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                 "burst", "32kb", "latency", "400ms"])

    def kv_tx_bytes(self):
        """Bytes the prefill host has sent on the KV link so far."""
        p = run(["ip", "-n", self.ns["prefill"], "-s", "-j", "link", "show", "dev", self.kv_dev["prefill"]])
        return json.loads(p.stdout)[0]["stats64"]["tx"]["bytes"]


class NsNode:
    """A pdserve process inside a namespace, listening on its front address."""

    def __init__(self, net, host, name, args, port, log_path, env=None):
        self.port = port
        self.url = f"http://{net.ip[host]}:{port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        envs = ["env"] + [f"{k}={v}" for k, v in (env or {}).items()]
        self.proc = subprocess.Popen(["ip", "netns", "exec", net.ns[host]] + envs
                                     + [binary(name)] + list(args) + ["--port", str(port), "--host", "0.0.0.0"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/health", proc=self.proc, timeout=90)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} in {host} did not start:\n" + self.logtext()[-3000:])

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def metric(node, name, label=None):
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} {label or ''} not in {node.url}/metrics"
    return total


def free_blocks(node):
    return metric(node, "pdserve:kv_free_blocks")


def wait_until(cond, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def wait_free(node, want, timeout=30.0):
    assert wait_until(lambda: free_blocks(node) == want, timeout), \
        f"{node.url}: free blocks {free_blocks(node)}, want {want}"


def post(url, body, timeout=120, headers=None):
    """POST JSON; returns (status, parsed JSON or list of SSE events)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read().decode(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    if body.get("stream") and status == 200:
        return status, [json.loads(line[6:]) for line in raw.splitlines()
                        if line.startswith("data: ") and line != "data: [DONE]"]
    return status, json.loads(raw)


def kv_config(role, kv_ip, kv_port, policy=None, **extra):
    cfg = {"kv_connector": "UcxConnector", "kv_role": role, "kv_ip": kv_ip, "kv_port": kv_port,
           "kv_buffer_device": "cpu", "kv_connector_extra_config": dict({"control_timeout_s": 2}, **extra)}
    if policy:
        cfg["kv_load_failure_policy"] = policy
    return json.dumps(cfg)

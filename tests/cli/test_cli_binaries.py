"""The command line of the real binaries (issue #2's "Done when" lines, checked on the
programs themselves rather than on the parser's table):

- pdserve-prefill, pdserve-decode, pdserve-proxy and pdserve-bench answer --help and
  --version with exit 0;
- `pdserve-decode --help` and `pdserve-prefill --help` name every option of the seed list
  (a copy lives in tests/data/seed_options.txt), in the seed's groups;
- docs/options.md lists every seed option with a status, and holds exactly what the
  binaries' --help-markdown generates, for the nodes and for the proxy;
- a bad value exits non-zero with one line on stderr naming the option, the bad value
  and what is accepted; a "not supported yet" option with a non-default value fails at
  start-up; --config is read by the binary and the command line wins over it;
- the proxy has its own options (listen address, TLS, api key, CORS, pools, policy) with
  the same error format;
- --uvicorn-log-level sets the level of the log, trace included (default model needed);
- `cmake --install` installs the four binaries.
"""
import os
import re
import shutil
import subprocess

import pytest

from pdtest import BUILD, NODE_ARGS, ROOT, binary

SEED = os.path.join(ROOT, "tests", "data", "seed_options.txt")
NODES = ["pdserve-decode", "pdserve-prefill"]
ALL = NODES + ["pdserve-proxy", "pdserve-bench"]
DTYPE_MSG = "--dtype: 'float17' is not one of auto, half, float16, bfloat16, float, float32"


def seed_options():
    with open(SEED) as f:
        opts = [l.strip() for l in f if l.strip()]
    assert len(opts) == 131
    return opts


def run(name, *args, timeout=60, env=None):
    return subprocess.run([binary(name)] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env)


def names_word(text, opt):
    """opt appears as a whole option name (--model must not match inside --model-impl)."""
    return re.search(r"(?<![\w-])" + re.escape(opt) + r"(?![\w-])", text) is not None


def project_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(pdserve VERSION ([0-9.]+)", f.read()).group(1)


@pytest.mark.parametrize("name", ALL)
def test_help_and_version(name):
    h = run(name, "--help")
    assert h.returncode == 0, h.stderr
    assert name in h.stdout and "--help" in h.stdout and "--version" in h.stdout
    v = run(name, "--version")
    assert v.returncode == 0, v.stderr
    assert project_version() in v.stdout


@pytest.mark.parametrize("name", NODES)
def test_node_help_lists_every_seed_option(name):
    text = run(name, "--help").stdout
    missing = [o for o in seed_options() if not names_word(text, o)]
    assert missing == []
    # grouped like the seed: each group heading once, in this order
    groups = ["Server:", "CORS:", "Security:", "Tool calling and reasoning:", "Model:", "Cache:", "Parallel:",
              "Scheduler:", "Speculative decoding:", "LoRA and adapters:", "Multimodal:", "Observability:",
              "KV transfer:"]
    pos = [text.find("\n" + g + "\n") for g in groups]
    assert all(p >= 0 for p in pos), dict(zip(groups, pos))
    assert pos == sorted(pos)
    # the short aliases are shown beside their options
    for alias in ["-tp", "-pp", "-q", "-O", "-spec-draft-tp"]:
        assert names_word(text, alias), alias


def test_prefill_and_decode_share_one_table():
    d = run("pdserve-decode", "--help-markdown").stdout
    p = run("pdserve-prefill", "--help-markdown").stdout
    assert d and d == p


def test_docs_options_md_lists_every_seed_option_with_status():
    with open(os.path.join(ROOT, "docs", "options.md")) as f:
        doc = f.read()
    nodes = doc.split("\n## pdserve-proxy\n")[0]
    rows = {}
    for line in nodes.splitlines():
        m = re.match(r"\| `(--[a-z0-9-]+)`(?:, `(-[a-zA-Z-]+)`)? \|", line)
        if m:
            rows[m.group(1)] = line
            if m.group(2):
                rows[m.group(2)] = line  # a short alias shares its option's row
    statuses = ("| works |", "| works differently", "| accepted, no effect", "| not supported yet")
    for opt in seed_options():
        if opt == "--no-enable-prefix-caching":
            assert "--no-enable-prefix-caching" in rows["--enable-prefix-caching"]
            continue
        assert opt in rows, opt
        assert any(s in rows[opt] for s in statuses), rows[opt]


def test_docs_options_md_is_generated_from_the_binaries():
    """scripts/gen_options_md.sh output, section by section: the page cannot drift from
    the tables (test_cli checks the node section in C; this one covers the proxy too)."""
    with open(os.path.join(ROOT, "docs", "options.md")) as f:
        doc = f.read()
    node_md = run("pdserve-decode", "--help-markdown").stdout
    proxy_md = run("pdserve-proxy", "--help-markdown").stdout
    assert node_md and proxy_md
    stale = "docs/options.md is stale: run scripts/gen_options_md.sh"
    assert node_md in doc, stale
    assert ("\n## pdserve-proxy\n" + proxy_md) in doc, stale
    assert doc.endswith(proxy_md), stale


@pytest.mark.parametrize("name", NODES)
@pytest.mark.parametrize("args,message", [
    (["--dtype", "float17"], DTYPE_MSG),
    (["--dtype=float17"], DTYPE_MSG),
    (["--port", "eighty"], "--port: 'eighty' is not an integer"),
    (["--block-size", "24"], "--block-size: '24' is not one of 8, 16, 32, 64, 128"),
    (["--gpu-memory-utilization", "x"], "--gpu-memory-utilization: 'x' is not a number"),
    (["--enforce-eager=maybe"], "--enforce-eager: 'maybe' is not a boolean (true or false)"),
    (["-tp", "two"], "--tensor-parallel-size: 'two' is not an integer"),
    (["--max-num-seqs"], "--max-num-seqs: expected a value"),
    (["--frobnicate"], "unknown option '--frobnicate' (see --help)"),
    (["--port", "70000"], "--port: 70000 is out of range (0 to 65535)"),
    (["-O", "7"], "--compilation-config: level must be 0, 1, 2 or 3"),
])
def test_bad_value_is_one_clear_line(name, args, message):
    p = run(name, *args)
    assert p.returncode != 0
    assert p.stdout == ""
    assert p.stderr == f"{name}: error: {message}\n"


@pytest.mark.parametrize("name", NODES)
def test_bad_json_names_option_and_value(name):
    p = run(name, "--kv-transfer-config", "{bad")
    assert p.returncode != 0
    lines = p.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{name}: error: --kv-transfer-config: '{{bad' is not valid JSON")
    # the content is validated at start-up too, before the model is loaded, in one line
    p = run(name, "--kv-transfer-config.kv_connector", "UcxConnector", "--kv-transfer-config.kv_role", "kv_bogus",
            "--model", "/nonexistent.gguf")
    assert p.returncode != 0
    assert p.stderr == (f"{name}: error: --kv-transfer-config: unknown kv_role \"kv_bogus\" "
                        "(kv_producer, kv_consumer or kv_both)\n")
    p = run(name, "--kv-transfer-config.kv_role")
    assert p.returncode != 0 and len(p.stderr.splitlines()) == 1 and "--kv-transfer-config.kv_role" in p.stderr


@pytest.mark.parametrize("name", NODES)
@pytest.mark.parametrize("args,what", [
    (["--enable-lora"], "--enable-lora: not supported yet"),
    (["-tp", "2"], "--tensor-parallel-size: not supported yet"),
    (["--pipeline-parallel-size=2"], "--pipeline-parallel-size: not supported yet"),
    (["--speculative-model", "draft"], "--speculative-model: not supported yet"),
    (["--num-scheduler-steps", "4"], "--num-scheduler-steps: not supported yet"),
    (["--enable-sleep-mode"], "--enable-sleep-mode: not supported yet"),
    (["--task", "embed"], "--task: 'embed' is not supported yet"),
    (["--device", "tpu"], "--device: 'tpu' is not supported yet"),
])
def test_not_supported_yet_fails_at_start(name, args, what):
    p = run(name, *args)
    assert p.returncode != 0
    assert p.stderr.startswith(f"{name}: error: {what}")
    assert len(p.stderr.splitlines()) == 1


def test_not_yet_option_at_its_default_is_accepted(tmp_path):
    """-tp 1 and --max-loras 1 are the defaults: start-up goes past the option checks and
    stops only at the (missing) model."""
    p = run("pdserve-decode", "-tp", "1", "--max-loras", "1", "--enable-lora=false",
            "--model", str(tmp_path / "none.gguf"), *NODE_ARGS)
    assert p.returncode != 0
    assert "not supported yet" not in p.stderr
    assert "none.gguf" in p.stderr


@pytest.mark.parametrize("name", NODES)
def test_unreadable_tls_file_is_refused_before_the_model(name, tmp_path):
    """A TLS file that cannot be read stops the node before its model is loaded (the model
    given here does not exist either: the TLS line comes first and alone)."""
    cert = tmp_path / "cert.pem"
    cert.write_text("not read\n")
    p = run(name, "--model", str(tmp_path / "none.gguf"), "--ssl-keyfile", str(tmp_path / "missing.key"),
            "--ssl-certfile", str(cert), *NODE_ARGS)
    assert p.returncode == 1
    assert p.stderr == f"{name}: error: --ssl-keyfile: cannot read '{tmp_path / 'missing.key'}': " \
                       "No such file or directory\n", p.stderr


def test_noop_option_is_not_silent(tmp_path):
    p = run("pdserve-prefill", "--trust-remote-code", "--model", str(tmp_path / "none.gguf"), *NODE_ARGS)
    assert p.returncode != 0  # no model; the options were read and the warning logged before that
    assert re.search(r"^prefill WARNING .*\] --trust-remote-code: accepted, no effect \(pdserve never executes",
                     p.stderr, re.M), p.stderr


def test_config_file_and_command_line_wins(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("dtype: float17\n")
    p = run("pdserve-decode", "--config", str(cfg))
    assert p.returncode != 0
    assert p.stderr == f"pdserve-decode: error: {DTYPE_MSG}\n"
    # the file's port is out of range, the command line's is fine: the command line wins
    # and start-up goes on to the (missing) model
    none = str(tmp_path / "none.gguf")
    cfg.write_text("port: 70000\nmax-num-seqs: 4\n")
    p = run("pdserve-decode", "--config", str(cfg), "--port", "8001", "--model", none, *NODE_ARGS)
    assert p.returncode != 0
    assert "--port" not in p.stderr and "none.gguf" in p.stderr
    # and the other way round: the command line's bad port is refused over the file's good one
    cfg.write_text("port: 8001\n")
    p = run("pdserve-decode", "--config", str(cfg), "--port=70000", "--model", none)
    assert p.stderr == "pdserve-decode: error: --port: 70000 is out of range (0 to 65535)\n"
    js = tmp_path / "node.json"
    js.write_text('{"enable_lora": true}')
    p = run("pdserve-prefill", "--config", str(js))
    assert p.returncode != 0 and p.stderr.startswith("pdserve-prefill: error: --enable-lora: not supported yet")


def test_proxy_options():
    text = run("pdserve-proxy", "--help").stdout
    for g in ["Server:", "CORS:", "Security:", "Pools:", "Routing:"]:
        assert "\n" + g + "\n" in text, g
    for opt in ["--host", "--port", "--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs", "--api-key",
                "--allowed-origins", "--allow-credentials", "--prefill", "--decode", "--register-bind",
                "--policy", "--prefill-policy", "--decode-policy", "--config", "--uvicorn-log-level"]:
        assert names_word(text, opt), opt
    cases = [
        (["--decode", "127.0.0.1:1", "--policy", "random"],
         "--policy: 'random' is not one of round_robin, least_loaded, power_of_two, prefix_aware"),
        (["--decode", "127.0.0.1:1", "--port=x"], "--port: 'x' is not an integer"),
        (["--decode", "127.0.0.1:1", "--ssl-keyfile", "k.pem"], "--ssl-keyfile and --ssl-certfile must be given together"),
        (["--decode", "127.0.0.1:1", "--allowed-origins", "[1]"], None),
        ([], "no decode nodes: give --decode host:port (repeatable) or --register-bind for nodes that register"),
        (["--decode", "127.0.0.1:1", "--port", "65536"], "--port: 65536 is out of range (0 to 65535)"),
        (["--decode", "127.0.0.1:1", "--max-retries", "17"], "--max-retries: 17 is out of range (0 to 16)"),
        (["--decode", "127.0.0.1:1", "--request-timeout", "0"], "--request-timeout: 0 must be > 0"),
        (["--decode", "127.0.0.1:1", "--heartbeat-timeout=-1"], "--heartbeat-timeout: -1 must be > 0"),
        (["--decode", "127.0.0.1:1", "--drain-timeout=-2"], "--drain-timeout: -2 must be >= 0"),
        (["--decode", "127.0.0.1:1", "--disagg-min-prompt-tokens=-3"], "--disagg-min-prompt-tokens: -3 must be >= 0"),
        (["--decode", "127.0.0.1:1", "--max-concurrent-requests", "0"], "--max-concurrent-requests: 0 must be >= 1"),
        (["--decode", "127.0.0.1:1", "--relay-threads", "65"],
         "--relay-threads: 65 is out of range (0 to 64; 0: one per 4 CPUs, at most 4)"),
        (["--decode", "127.0.0.1:1", "--ssl-cert-reqs", "3"], "--ssl-cert-reqs: '3' is not one of 0, 1, 2"),
        (["--decode", "127.0.0.1:1", "--ssl-keyfile", "k", "--ssl-certfile", "c", "--ssl-cert-reqs", "2"],
         "--ssl-cert-reqs 2 needs --ssl-ca-certs to verify client certificates"),
        (["--decode", "127.0.0.1:1", "--uvicorn-log-level", "loud"],
         "--uvicorn-log-level: 'loud' is not one of debug, info, warning, error, critical, trace"),
    ]
    for args, message in cases:
        p = run("pdserve-proxy", *args)
        assert p.returncode != 0, args
        assert len(p.stderr.splitlines()) == 1, p.stderr
        assert p.stderr.startswith("pdserve-proxy: error: ")
        if message:
            assert p.stderr == f"pdserve-proxy: error: {message}\n"


def log_levels(text):
    return set(re.findall(r"^\S+ (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) ", text, re.M))


def test_uvicorn_log_level_trace_and_warning(model_path):
    base = ["--model", model_path, *NODE_ARGS, "--generate", "Hello", "--max-tokens", "2"]
    p = run("pdserve-decode", *base, "--uvicorn-log-level", "trace", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "TRACE" in log_levels(p.stderr)
    assert re.search(r"^decode TRACE .*engine: step of 1 seqs \(1 prefill, 0 decode\)", p.stderr, re.M)
    p = run("pdserve-decode", *base, "--uvicorn-log-level", "warning", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert log_levels(p.stderr) <= {"WARNING", "ERROR", "CRITICAL"}
    p = run("pdserve-decode", *base, timeout=300)  # default info: no trace, no debug
    assert p.returncode == 0
    assert "INFO" in log_levels(p.stderr) and not log_levels(p.stderr) & {"TRACE", "DEBUG"}


def test_trace_shows_each_http_request_with_its_id(node_factory):
    import urllib.request
    node = node_factory(["--uvicorn-log-level", "trace"])
    try:
        req = urllib.request.Request(node.url + "/health", headers={"X-Request-Id": "trace-me-1"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    finally:
        assert node.stop() == 0
    assert re.search(r'^decode TRACE .*\] \[trace-me-1\] 127\.0\.0\.1:\d+ "GET /health" arrived$', node.logtext(),
                     re.M)


def test_cmake_install(tmp_path):
    if not os.path.exists(os.path.join(BUILD, "cmake_install.cmake")):
        pytest.skip("no configured build directory")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    for name in ALL:
        binary(name)  # skips when a binary is not built
    p = subprocess.run([cmake, "--install", BUILD, "--prefix", str(tmp_path / "inst")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for name in ALL:
        path = tmp_path / "inst" / "bin" / name
        assert os.access(path, os.X_OK), name
        v = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
        assert v.returncode == 0 and project_version() in v.stdout


def test_proxy_options_take_effect(tmp_path):
    """The proxy's listen address, CORS and policy options reach the running proxy, and its
    --config file works like the nodes' (the command line wins)."""
    import json
    import urllib.request

    from pdtest import Node, free_port, wait_http
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("policy: power_of_two\ndecode-policy: prefix_aware\n"
                   "allowed-origins: '[\"https://a.example\"]'\nallow-credentials: true\n")
    dead = free_port()  # nobody listens there: the pool just reports the node unhealthy
    px = Node("pdserve-proxy", ["--config", str(cfg), "--decode", f"127.0.0.1:{dead}", "--prefill",
                                f"127.0.0.1:{dead}", "--decode-policy", "least_loaded", "--host", "127.0.0.1"],
              free_port(), str(tmp_path / "proxy.log"))
    try:
        wait_http(px.url + "/metrics", proc=px.proc, timeout=30)
        with urllib.request.urlopen(px.url + "/status", timeout=10) as r:
            st = json.loads(r.read())
        assert st["prefill"]["policy"] == "power_of_two"  # --policy from the file
        assert st["decode"]["policy"] == "least_loaded"   # the command line over the file's prefix_aware

        def preflight(origin):
            req = urllib.request.Request(px.url + "/v1/models", method="OPTIONS", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, dict(r.headers)
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers)
        status, h = preflight("https://a.example")
        assert status in (200, 204)
        assert h.get("Access-Control-Allow-Origin") == "https://a.example"
        assert h.get("Access-Control-Allow-Credentials") == "true"
        status, h = preflight("https://b.example")
        assert "Access-Control-Allow-Origin" not in h
    finally:
        assert px.stop() == 0

"""compare_shapes.sh end to end with stand-in node binaries.

The real pdserve-decode / -prefill / -proxy are not needed: each stand-in reads --port
and serves the fake OpenAI server there, so the script's cluster start-up, health
waits, sweeps, summary table and plot are exercised.
"""
import os
import pathlib
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE.parent.parent / "bench" / "scripts" / "compare_shapes.sh"

STANDIN = """#!/bin/sh
PORT=
while [ $# -gt 0 ]; do
  case "$1" in --port) PORT="$2"; shift 2 ;; *) shift ;; esac
done
exec "$FAKE_PYTHON" "$FAKE_OPENAI" --port "$PORT" --script "$FAKE_SCRIPT"
"""


def free_base_port(span=8):
    import random
    import socket
    for _ in range(50):
        base = random.randint(20000, 60000)
        try:
            socks = []
            for k in range(span):
                s = socket.socket()
                s.bind(("127.0.0.1", base + k))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no free port range")


def test_compare_shapes_with_standins(bench_bin, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl (the command) is needed by compare_shapes.sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("pdserve-decode", "pdserve-prefill", "pdserve-proxy"):
        p = bindir / name
        p.write_text(STANDIN)
        p.chmod(0o755)
    shutil.copy(bench_bin, bindir / "pdserve-bench")
    script = tmp_path / "s.json"
    script.write_text('{"ttft_ms": 20, "itl_ms": 3, "ttft_per_active_ms": 15}')
    import sys
    env = dict(os.environ, FAKE_OPENAI=str(HERE / "fake_openai.py"), FAKE_SCRIPT=str(script),
               FAKE_PYTHON=sys.executable)
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(SCRIPT), "--bin-dir", str(bindir), "--shapes", "1d 1p1d",
                        "--rates", "5,30", "--num-prompts", "16", "--input-len", "16",
                        "--output-len", "4", "--goodput", "ttft:500", "--out", str(out),
                        "--base-port", str(free_base_port())], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = (out / "summary.tsv").read_text().strip().splitlines()
    assert summary[0].startswith("shape\trate")
    assert len(summary) == 1 + 2 * 2
    assert "1d       highest rate" in p.stdout and "1p1d     highest rate" in p.stdout
    cmds = (out / "commands.txt").read_text()
    assert "pdserve-proxy --prefill 127.0.0.1:" in cmds and "--decode 127.0.0.1:" in cmds
    assert '"kv_role":"kv_producer"' in cmds and '"kv_role":"kv_consumer"' in cmds
    if shutil.which("gnuplot"):
        assert (out / "compare_goodput.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_shapes_needs_cluster(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), "--bin-dir", str(tmp_path), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True,
                       env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert p.returncode == 3
    assert "needs the pdserve cluster binaries" in p.stderr

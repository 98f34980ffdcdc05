"""One pdserve-bench process holds thousands of concurrent streams (issue 9: "one process
drives thousands of concurrent streams from 2 cores").

The server is bench/scripts/fastsse.c (one C thread, epoll), so the server is not the
ceiling; 2000 streams are started at once and each streams 20 chunks 300 ms apart, so all
of them are open at the same time for about 6 s.  Checked: every request succeeds, the
bench and the server both see 2000 at once, every chunk arrives, and the client's CPU per
streamed chunk stays far below what one core affords at this rate (measured about 9-10 us
on a loaded 2-core machine, docs/bench.md "Client capacity"; the bound here is 200 us,
a 20x margin for a busy shared machine, and a client that polled or copied per stream
would still exceed it).
"""
import json
import pathlib
import resource
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STREAMS = 2000
CHUNKS = 20
ITL_MS = 300


@pytest.fixture
def fastsse(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for bench/scripts/fastsse.c")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * STREAMS + 200:
        pytest.skip("descriptor limit %d too low for %d streams" % (hard, STREAMS))
    exe = tmp_path / "fastsse"
    subprocess.run([cc, "-O2", "-o", str(exe), str(ROOT / "bench/scripts/fastsse.c")],
                   check=True)
    proc = subprocess.Popen([str(exe), "0", "100000", str(ITL_MS * 1000)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    yield "http://127.0.0.1:%d" % int(line.split()[1])
    proc.terminate()
    proc.wait(timeout=10)


def test_thousands_of_concurrent_streams(bench_bin, fastsse, tmp_path):
    out = tmp_path / "cap"
    p = subprocess.run([str(bench_bin), "--base-url", fastsse, "--model", "fast-model",
                        "--num-prompts", str(STREAMS), "--max-concurrency", str(STREAMS),
                        "--request-rate", "inf", "--random-input-len", "8",
                        "--random-output-len", str(CHUNKS), "--ready-check-timeout-sec", "0",
                        "--percentile-metrics", "ttft,itl", "--disable-tqdm", "--quiet",
                        "--save-result", "--result-dir", str(out), "--result-filename",
                        "r.json"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads((out / "r.json").read_text())
    assert d["completed"] == STREAMS and d["failed"] == 0, d["errors_by_kind"]
    assert d["total_output_tokens"] == STREAMS * CHUNKS
    # all of them in flight together (the bench's own count and vLLM's 1-s buckets)
    assert d["peak_inflight"] == STREAMS
    assert d["max_concurrent_requests"] >= 0.95 * STREAMS
    # streams were held, not serialized: the whole run is about one stream's length
    one_stream_s = 0.1 + (CHUNKS - 1) * ITL_MS / 1000.0
    assert d["duration"] < 3 * one_stream_s, d["duration"]
    cpu_per_chunk_us = 1e6 * d["client_cpu_s"] / d["total_output_tokens"]
    print("streams %d, duration %.2f s, client CPU %.3f s = %.1f us per chunk, "
          "median ITL %.1f ms" % (STREAMS, d["duration"], d["client_cpu_s"],
                                   cpu_per_chunk_us, d["median_itl_ms"]))
    assert cpu_per_chunk_us < 200, cpu_per_chunk_us
    # the chunks' pacing survives 2000 streams: median gap near the server's 300 ms
    assert abs(d["median_itl_ms"] - ITL_MS) < 50, d["median_itl_ms"]

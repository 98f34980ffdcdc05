"""Two-host kvxfer test (network namespaces + veth, UCX over tcp, link cut).

Runs tests/kvxfer/netns_test.sh; skips when not root, when the test binary is not
built, or when the script reports that namespaces are not permitted (exit 77).
"""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("PD_BINARY_DIR", ROOT / "build")) / "tests" / "test_net_kvx"


def test_two_namespaces_and_link_cut():
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    if not BIN.exists():
        pytest.skip(f"{BIN} not built")
    proc = subprocess.run([str(ROOT / "tests/kvxfer/netns_test.sh"), str(BIN)],
                          capture_output=True, text=True, timeout=240)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT PD_OK" in proc.stdout
    assert "PASS netns_test" in proc.stdout

"""Chat templates rendered by pdserve's C engine (through tpl_driver) must equal Python
jinja2 in transformers' environment byte for byte.

Run from the source root:  python3 -m pytest tests/template
The driver is found through $PD_TPL_DRIVER or build/tests/template/tpl_driver.
"""
import json
import os
import subprocess

import pytest

jinja2 = pytest.importorskip("jinja2")

from conversations import gen_cases  # noqa: E402
import jinja_ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TEMPLATES = os.path.join(ROOT, "tests", "data", "templates")
N_CASES = int(os.environ.get("PD_TPL_CASES", "250"))


def driver_path():
    p = os.environ.get("PD_TPL_DRIVER") or os.path.join(ROOT, "build", "tests", "template", "tpl_driver")
    if not os.path.exists(p):
        pytest.skip("tpl_driver not built (%s)" % p)
    return p


def run_driver(template_path, cases):
    inp = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases)
    r = subprocess.run([driver_path(), template_path], input=inp.encode(), capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().split("\n")[:-1]
    assert len(lines) == len(cases)
    return [json.loads(x) for x in lines]


def reference(source, case):
    try:
        return {"ok": True, "text": jinja_ref.render_chat(source, case)}
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:
            return {"ok": False, "raise": str(e)}
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    except (jinja_ref.RefError, TypeError, ValueError, KeyError, AttributeError) as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def check_all(name, cases):
    path = os.path.join(TEMPLATES, name + ".jinja")
    source = open(path, encoding="utf-8").read()
    got = run_driver(path, cases)
    bad = []
    n_ok = 0
    for i, (case, res) in enumerate(zip(cases, got)):
        ref = reference(source, case)
        if ref["ok"]:
            n_ok += 1
            if not res.get("ok") or res["text"] != ref["text"]:
                bad.append((i, case, ref, res))
        elif res.get("ok"):
            bad.append((i, case, ref, res))
        elif "raise" in ref and res.get("error") != ref["raise"]:
            bad.append((i, case, ref, res))
    if bad:
        i, case, ref, res = bad[0]
        pytest.fail("%d/%d mismatches for %s; first (case %d):\ncase=%s\nref=%r\nc  =%r"
                    % (len(bad), len(cases), name, i, json.dumps(case, ensure_ascii=False), ref, res))
    return n_ok


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen3", "llama31_tools", "qwen25_tools",
                                  "mistral", "llama2", "hermes_tools"])
def test_template_matches_jinja2(name):
    cases = gen_cases(name, N_CASES)
    n_ok = check_all(name, cases)
    # most generated conversations must render (errors are compared too, but are not the point)
    assert n_ok >= N_CASES // 2, "only %d of %d cases rendered" % (n_ok, N_CASES)

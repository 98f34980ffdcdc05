"""Checks the reference itself: jinja_ref.render_chat must agree with transformers'
own render_jinja_template (skipped when transformers is not installed)."""
import os

import pytest

tcu = pytest.importorskip("transformers.utils.chat_template_utils")

import jinja_ref  # noqa: E402
from conversations import gen_cases  # noqa: E402
from test_template_ref import TEMPLATES  # noqa: E402


def transformers_render(source, case):
    kwargs = {}
    if case.get("bos_token") is not None:
        kwargs["bos_token"] = case["bos_token"]
    if case.get("eos_token") is not None:
        kwargs["eos_token"] = case["eos_token"]
    for k, v in (case.get("kwargs") or {}).items():
        kwargs[k] = v
    rendered, _ = tcu.render_jinja_template(
        conversations=[case["messages"]], tools=case.get("tools"), documents=case.get("documents"),
        chat_template=source, continue_final_message=bool(case.get("continue_final_message")),
        add_generation_prompt=bool(case.get("add_generation_prompt")), **kwargs)
    return rendered[0]


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen3", "llama31_tools", "qwen25_tools",
                                  "mistral", "llama2", "hermes_tools"])
def test_reference_matches_transformers(name):
    source = open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8").read()
    compared = 0
    for case in gen_cases(name, 120):
        if case.get("add_generation_prompt") and case.get("continue_final_message"):
            continue  # the conflict is checked by apply_chat_template, not by the renderer
        try:
            want = ("ok", jinja_ref.render_chat(source, case))
        except jinja_ref.RefError:
            continue  # pdserve's own argument checks (e.g. continuing a non-assistant turn)
        except Exception as e:  # noqa: BLE001
            want = ("err", type(e).__name__)
        try:
            got = ("ok", transformers_render(source, case))
        except Exception as e:  # noqa: BLE001
            got = ("err", type(e).__name__)
        if want[0] == "ok" or got[0] == "ok":
            assert want == got, "case %r" % (case,)
        compared += 1
    assert compared > 60

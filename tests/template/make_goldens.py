"""Write tests/data/templates/goldens.jsonl: a few dozen chat renderings made with the
python reference (jinja_ref.py) so the C-only unit test (tests/unit/test_template.c) can
check the engine without python.  Re-run after changing a template or the generator:

    python3 tests/template/make_goldens.py
"""
import json
import os

import jinja2

import jinja_ref
from conversations import gen_cases

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(os.path.dirname(HERE), "data", "templates")
PER_TEMPLATE = 6


def main():
    out = []
    for name in ["smollm2", "llama3", "qwen3", "llama31_tools", "qwen25_tools", "mistral", "llama2",
                 "hermes_tools"]:
        source = open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8").read()
        kept = 0
        for case in gen_cases(name, 200, seed=99):
            if kept >= PER_TEMPLATE:
                break
            try:
                text = jinja_ref.render_chat(source, case)
            except (jinja2.exceptions.TemplateError, jinja_ref.RefError, TypeError):
                continue
            # prefer a mix: some with tools, some continuing the final message
            out.append({"template": name + ".jinja", "case": case, "expected": text})
            kept += 1
    path = os.path.join(TEMPLATES, "goldens.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for g in out:
            f.write(json.dumps(g, ensure_ascii=False) + "\n")
    print("wrote %d goldens to %s" % (len(out), path))


if __name__ == "__main__":
    main()

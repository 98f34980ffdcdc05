"""Random chat conversations for the chat template tests.

gen_cases(template_name, n, seed) returns n cases (dicts in tpl_driver's input format):
system/user/assistant/tool turns, tool calls with dict or string arguments, tool lists,
empty content, unicode, reasoning, add_generation_prompt and continue_final_message, and
per-template kwargs.  Numbers are chosen so JSON ints stay ints and floats are never
integral (the C side cannot tell 1.0 from 1 after cJSON parsing).
"""
import random

TEXTS = [
    "Hello!", "What is the capital of France?", "Paris.", "", " ", "  padded both sides  ",
    "line one\nline two\n", "\n\nleading newlines", "trailing newline\n",
    "quotes: 'single' and \"double\" and back\\slash", "tabs\tand\tmore",
    "héllo wörld — ünïcödé", "中文测试，你好", "emoji 😀🚀 and ZWJ 👩‍💻", "non-breaking\u00a0space",
    "Σίσυφος ΣΑΣ", "Привет, мир", "<think>\nsecret plan\n</think>\n\nthe answer is 42",
    "<think>short</think>answer", "<tool_response>data</tool_response>", "{{ not a tag }} {% nor this %}",
    "json-ish: {\"a\": [1, 2]}", "control\x01char and \x7f del", "a" * 300, "The end.",
    "Math: 3 < 4 && 5 > 2", "CAPS and lower", "   ", "ends with spaces   ",
]

NAMES = ["get_weather", "search", "calc", "lookup_user", "send_email"]


def _rand_value(r, depth=0):
    k = r.randrange(9 if depth < 2 else 6)
    if k == 0:
        return r.randrange(-1000, 1000)
    if k == 1:
        return r.choice([0.5, -2.25, 3.14159, 1e-07, 1.5e+300, 123456.789, 0.1])
    if k == 2:
        return r.choice([True, False])
    if k == 3:
        return None
    if k in (4, 5):
        return r.choice(TEXTS)
    if k == 6:
        return [_rand_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(["a", "b", "city", "ünï", "n", "x y"]): _rand_value(r, depth + 1)
            for _ in range(r.randrange(4))}


def _tool(r, name):
    props = {}
    for p in r.sample(["location", "unit", "query", "limit", "verbose"], r.randrange(1, 4)):
        props[p] = {"type": r.choice(["string", "integer", "boolean", "number"]),
                    "description": r.choice(TEXTS[:12])}
        k = r.random()
        if k < 0.15:
            props[p] = {"type": "array", "items": r.choice([{"type": "string"}, {"type": "array", "items": {}}])}
        elif k < 0.25:
            props[p] = {"type": ["string", "null"]}
        elif k < 0.32:
            props[p] = {"type": "object", "additionalProperties": {"type": "integer"}}
        elif k < 0.36:
            props[p] = {"description": "untyped"}
        if r.random() < 0.3:
            props[p]["enum"] = ["a", "b", "ç"]
    fn = {"name": name, "description": r.choice(["Get things.", "Search the web for ünïcode",
                                                  "Compute \"exactly\"", ""]),
          "parameters": {"type": "object", "properties": props,
                         "required": list(props)[:1]}}
    if r.random() < 0.2:
        fn["return"] = {"type": "string"}
    return {"type": "function", "function": fn}


def _tool_call(r, name, idx):
    args = {k: _rand_value(r) for k in r.sample(["location", "unit", "query", "limit"], r.randrange(0, 4))}
    if r.random() < 0.25:
        import json
        args = json.dumps(args, ensure_ascii=r.random() < 0.5)
    call = {"type": "function", "function": {"name": name, "arguments": args}}
    if r.random() < 0.7:
        call["id"] = "call_%d" % idx
    return call


def _content(r):
    if r.random() < 0.8:
        return r.choice(TEXTS)
    return " ".join(r.choice(TEXTS) for _ in range(r.randrange(1, 4)))


def gen_conversation(r, style):
    msgs = []
    if r.random() < 0.5:
        msgs.append({"role": "system", "content": _content(r)})
    tools = None
    if style.get("tools") and r.random() < 0.6:
        tools = [_tool(r, n) for n in r.sample(NAMES, r.randrange(1, 4))]
    turns = r.randrange(1, 6)
    call_idx = 0
    for t in range(turns):
        msgs.append({"role": "user", "content": _content(r)})
        if t == turns - 1 and r.random() < 0.5:
            break
        if style.get("tools") and r.random() < 0.35:
            ncalls = 1 if style.get("one_call") else r.randrange(1, 3)
            names = [r.choice(NAMES) for _ in range(ncalls)]
            calls = []
            for n in names:
                calls.append(_tool_call(r, n, call_idx))
                call_idx += 1
            m = {"role": "assistant", "content": r.choice(["", _content(r), None]) if not style.get("no_content_with_calls") else "",
                 "tool_calls": calls}
            msgs.append(m)
            for c in calls:
                msgs.append({"role": "tool", "content": r.choice([_content(r), '{"temp": 21.5}']),
                             "tool_call_id": c.get("id", "x")})
            if r.random() < 0.5:
                msgs.append({"role": "assistant", "content": _content(r)})
            continue
        m = {"role": "assistant", "content": _content(r)}
        if style.get("reasoning") and r.random() < 0.3:
            m[r.choice(["reasoning_content", "reasoning", "thinking"])] = r.choice(["thought about it", "\nhmm\n", ""])
        msgs.append(m)
    if r.random() < 0.05:
        # a stray role or odd structure, to exercise the error paths
        msgs.append({"role": r.choice(["tool", "system", "developer"]), "content": _content(r)})
    if r.random() < 0.04:
        msgs.append({"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "image"}]})
    return msgs, tools


STYLES = {
    "smollm2": {},
    "llama3": {},
    "llama31_tools": {"tools": True, "one_call": True},
    "qwen25_tools": {"tools": True},
    "qwen3": {"tools": True, "reasoning": True},
    "mistral": {"tools": True},
    "llama2": {},
    "hermes_tools": {"tools": True},
}

SPECIAL = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
    "llama31_tools": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen25_tools": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "mistral": ("<s>", "</s>"),
    "llama2": ("<s>", "</s>"),
    "hermes_tools": ("<|begin_of_text|>", "<|im_end|>"),
}


def gen_cases(name, n, seed=1234):
    r = random.Random("%s-%d" % (name, seed))
    style = STYLES[name]
    cases = []
    for i in range(n):
        msgs, tools = gen_conversation(r, style)
        bos, eos = SPECIAL[name]
        case = {"messages": msgs, "bos_token": bos, "eos_token": eos}
        if tools is not None:
            case["tools"] = tools
        last_is_asst = msgs and msgs[-1]["role"] == "assistant"
        if last_is_asst and r.random() < 0.4:
            case["continue_final_message"] = True
        else:
            case["add_generation_prompt"] = r.random() < 0.6
        kw = {}
        if name == "qwen3" and r.random() < 0.5:
            kw["enable_thinking"] = r.random() < 0.5
        if name == "llama31_tools":
            kw["date_string"] = r.choice(["26 Jul 2024", "01 Jan 2025"])
            if r.random() < 0.3:
                kw["tools_in_user_message"] = False
        if r.random() < 0.1:
            kw["unused_flag"] = True
        if kw:
            case["kwargs"] = kw
        if r.random() < 0.1:
            case["documents"] = [{"title": r.choice(["Doc", "Ünï"]), "text": _content(r)}
                                 for _ in range(r.randrange(1, 3))]
            if r.random() < 0.3:
                del case["documents"][0]["title"]
        if r.random() < 0.02:
            case["add_generation_prompt"] = True
            case["continue_final_message"] = True
        cases.append(case)
    return cases

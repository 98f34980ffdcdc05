"""Reference renderer for the chat template tests.

It builds the jinja2 environment the way transformers' apply_chat_template does
(ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loop controls; a
tojson filter that is json.dumps with ensure_ascii=False; raise_exception, strftime_now,
namespace and dict globals) and reproduces the message preparation that
eng_chat_apply implements (reasoning field aliasing, continue_final_message tagging and
cutting, the add_generation_prompt/continue_final_message conflict).  Written for these
tests from the behaviour transformers documents; only jinja2 is needed.
"""
import copy
import json
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class RefError(Exception):
    pass


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError("underscore-prefixed namespace attribute")


class _Dict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)


_cache = {}


def compile_template(source):
    tpl = _cache.get(source)
    if tpl is None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.globals["dict"] = _Dict()
        env.globals["namespace"] = _Namespace
        tpl = env.from_string(source)
        _cache[source] = tpl
    return tpl


def render_ctx(source, ctx):
    # a deep copy: some jinja2 filters (indent on a list) mutate their input in place
    return compile_template(source).render(**copy.deepcopy(ctx))


def _alias(msg):
    reasoning = next((msg[k] for k in REASONING_FIELDS if msg.get(k) is not None), None)
    if reasoning is not None:
        msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
    return msg


def render_chat(source, case):
    """Render one case the way eng_chat_apply does; raises RefError for argument errors."""
    agp = bool(case.get("add_generation_prompt", False))
    cont = bool(case.get("continue_final_message", False))
    if agp and cont:
        raise RefError("continue_final_message and add_generation_prompt are not compatible")
    chat = [_alias(dict(m)) for m in json.loads(json.dumps(case.get("messages", [])))]
    final = None
    if cont:
        if not chat:
            raise RefError("empty conversation")
        last = chat[-1]
        if last.get("role") != "assistant":
            raise RefError("final message is not an assistant message")
        final = last.get("content")
        if final is None:
            raise RefError("no content")
        if "content" not in source:
            raise RefError("content not in template")
        if isinstance(final, list):
            for block in reversed(final):
                if "text" in block:
                    final = block["text"]
                    block["text"] = block["text"] + CONTINUE_TAG
                    break
            else:
                raise RefError("no text block")
        else:
            last["content"] = last["content"] + CONTINUE_TAG
    kwargs = {}
    if case.get("bos_token") is not None:
        kwargs["bos_token"] = case["bos_token"]
    if case.get("eos_token") is not None:
        kwargs["eos_token"] = case["eos_token"]
    for k, v in (case.get("kwargs") or {}).items():
        if k not in ("messages", "tools", "documents", "add_generation_prompt"):
            kwargs[k] = v
    out = compile_template(source).render(messages=chat, tools=case.get("tools"),
                                          documents=case.get("documents"),
                                          add_generation_prompt=agp, **kwargs)
    if cont:
        if final.strip() not in out or CONTINUE_TAG.strip() not in out:
            raise RefError("final message not found in the rendered chat")
        loc = out.rindex(CONTINUE_TAG.strip())
        if out[loc:loc + len(CONTINUE_TAG)] == CONTINUE_TAG:
            out = out[:loc]
        else:
            out = out[:loc].rstrip()
    return out

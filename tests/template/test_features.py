"""Engine features, one small template each, compared with jinja2 in transformers'
environment (see jinja_ref.py): output byte for byte, or both failing (with the same
message for raise_exception)."""
import json
import os
import subprocess

import pytest

jinja2 = pytest.importorskip("jinja2")

import jinja_ref  # noqa: E402
from test_template_ref import driver_path  # noqa: E402

CTX = {
    "s": "Hello World", "u": "héllo wörld ΣΑΣ", "n": 42, "neg": -7, "f": 3.5, "big": 1.5e300,
    "tiny": 1e-07, "t": True, "fa": False, "none": None, "empty": "", "l": [3, 1, 2],
    "words": ["banana", "Apple", "cherry", "apple"], "d": {"b": 2, "a": 1, "c": None},
    "msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
             {"role": "user", "content": "bye", "extra": [1, 2]}],
    "nested": {"x": {"y": {"z": "deep"}}}, "ws": "  \n padded \t ", "fl": [1.25, 2, 0.1],
    "q": "it's \"quoted\"", "mixed": [1, "a", None, True, 2.5, {"k": [1]}],
    "tree": [{"name": "a", "kids": [{"name": "b", "kids": []}, {"name": "c", "kids": [{"name": "d"}]}]},
             {"name": "e"}],
}

CASES = [
    # output and whitespace control
    "a {{ s }} b", "{{- s -}}  x  ", "  {%- if t %} yes {% endif -%}  ",
    "line1\n    {% if t %}\n    in\n    {% endif %}\nline2", "{% if t %}\nA{% endif %}\nB",
    "x  {# comment #}\n  y", "  {#- c -#}  z", "{% raw %}{{ not }}{% endraw %}",
    "a\n  {%+ if t %}k{% endif %}", "{% if t +%}\nkeep{% endif %}", "\n\n{{ n }}\n\n",
    "text with trailing newline\n", "crlf\r\nline\r\n",
    # literals and printing
    "{{ 1 }} {{ -1 }} {{ 1.0 }} {{ 2.50 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }}",
    "{{ big }} {{ tiny }} {{ f }} {{ 1/3 }} {{ 2/2 }} {{ 10 // 3 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}",
    "{{ none }} {{ t }} {{ fa }} {{ l }} {{ d }} {{ mixed }} {{ (1, 2) }} {{ (1,) }} {{ q }}",
    "{{ [1, 'a', none] }} {{ {'a': 1, 'b': [true]} }} {{ 'a' 'b' }} {{ \"x\\ny\\t\\u00e9\" }}",
    "{{ msgs }}", "{{ u }} {{ u | length }} {{ u[1] }} {{ u[-1] }} {{ u[1:4] }} {{ u[::-1] }}",
    "{{ 7.0 / 2 }} {{ 3 * 'ab' }} {{ [1] * 3 }} {{ 'a' ~ 1 ~ none ~ t }} {{ 1 + 2.5 }} {{ t + 1 }}",
    "{{ 0.1 + 0.2 }} {{ 100.0 * 1.1 }} {{ 1.7976931348623157e308 }} {{ 5e-324 }} {{ -0.0 }}",
    # operators and tests
    "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 2 in l }} {{ 'b' in d }} {{ 5 not in l }}",
    "{{ n if t else 0 }} {{ n if fa }}|{{ t and n }} {{ fa or 'x' }} {{ not none }} {{ empty or 'def' }}",
    "{{ n is number }} {{ f is float }} {{ n is integer }} {{ t is boolean }} {{ t is number }} {{ s is string }}",
    "{{ d is mapping }} {{ l is iterable }} {{ s is sequence }} {{ none is none }} {{ x is defined }} {{ x is undefined }}",
    "{{ n is divisibleby 7 }} {{ n is even }} {{ n is odd }} {{ t is true }} {{ fa is false }} {{ 1 is true }}",
    "{{ n is eq 42 }} {{ n is equalto 41 }} {{ n is ne 1 }} {{ 1 is lt 2 }} {{ 's' is in 'so' }} {{ 'X' is upper }} {{ s is lower }}",
    "{{ msgs[0].role }} {{ msgs[0]['content'] }} {{ msgs[5] is defined }} {{ msgs[0].nope is defined }} {{ nested.x.y.z }}",
    "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 5) }} {{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }}",
    "{{ none.x is defined }}", "{{ undefined_thing }}|{{ undefined_thing | default('dflt') }}|{{ empty | default('e', true) }}",
    # string methods
    "{{ ws.strip() }}|{{ ws.lstrip() }}|{{ ws.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}",
    "{{ 'a b c'.split(' ', 1) }} {{ 'a-b-c'.rsplit('-', 1) }} {{ s.startswith('He') }} {{ s.endswith(('x', 'ld')) }}",
    "{{ s.upper() }} {{ s.lower() }} {{ u.upper() }} {{ 'hello world'.title() }} {{ \"it's a test\".title() }} {{ 'hELLO'.capitalize() }}",
    "{{ s.replace('o', '0') }} {{ s.replace('o', '0', 1) }} {{ 'ab'.replace('', '-') }} {{ s.find('W') }} {{ u.find('w') }} {{ s.count('o') }}",
    "{{ '{} and {}'.format(1, 'x') }} {{ '{0}-{0}'.format('r') }} {{ '{name}!'.format(name='bob') }} {{ ', '.join(['a', 'b']) }}",
    "{{ 'a\\nb\\r\\nc'.splitlines() }} {{ '123'.isdigit() }} {{ 'abc'.isalpha() }} {{ ' '.isspace() }}",
    "{{ '%s is %d' % ('x', 3) }} {{ '%s' % 'one' }} {{ '%05.2f' % 3.14159 }}",
    # filters
    "{{ s | length }} {{ l | count }} {{ d | length }} {{ ws | trim }} {{ 'xxhixx' | trim('x') }} {{ s | upper }} {{ s | lower }}",
    "{{ 'hello wORLD-foo(bar' | title }} {{ 'hELLO' | capitalize }} {{ n | string }} {{ '42' | int + 1 }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }}",
    "{{ '3.5' | float }} {{ n | float }} {{ -3 | abs }} {{ neg | abs }} {{ l | join(', ') }} {{ l | join }} {{ l | first }} {{ l | last }}",
    "{{ words | sort }} {{ words | sort(reverse=true) }} {{ words | sort(case_sensitive=true) }} {{ words | unique | list }} {{ l | sort | list }}",
    "{{ msgs | map(attribute='role') | list }} {{ msgs | map(attribute='nope', default='z') | join(',') }} {{ words | map('upper') | join }}",
    "{{ msgs | selectattr('role', 'equalto', 'user') | list | length }} {{ msgs | rejectattr('role', '==', 'user') | map(attribute='content') | first }}",
    "{{ l | select('odd') | list }} {{ l | reject('even') | list }} {{ mixed | select | list }} {{ msgs | selectattr('extra') | list | length }}",
    "{{ d | items | list }} {{ d | dictsort }} {{ d | dictsort(reverse=true) }} {{ {'B': 1, 'a': 2} | dictsort }} {{ l | reverse | list }} {{ s | reverse }}",
    "{{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 42.55 | round(1, 'floor') }} {{ 42.51 | round(0, 'ceil') }} {{ 7 | round }}",
    "{{ fl | sum }} {{ l | sum(start=10) }} {{ l | max }} {{ words | min }} {{ msgs | map(attribute='content') | max }}",
    "{{ s | replace('l', 'L') }} {{ s | replace('l', 'L', 2) }} {{ '<a href=\"x\">&</a>' | escape }} {{ s | safe }} {{ 'one two  three' | wordcount }}",
    "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('> ', blank=true) }}|{{ s | center(20) }}|",
    "{{ l | batch(2) | list }} {{ l | batch(2, 'x') | list }} {{ l | list }} {{ s | list | length }} {{ d | list }} {{ '%s-%s' | format('a', 2) }}",
    "{{ msgs | tojson }}", "{{ d | tojson(indent=2) }}", "{{ mixed | tojson(indent=4) }}", "{{ u | tojson }} {{ q | tojson }}",
    "{{ d | tojson(sort_keys=true) }} {{ l | tojson(separators=(',', ':')) }} {{ fl | tojson }} {{ {} | tojson(indent=2) }} {{ [] | tojson(indent=2) }}",
    "{{ 'ctl\\x01\\x7f\\u2028' | tojson }} {{ 'é😀' | tojson(ensure_ascii=true) }} {{ {1: 'int key', none: 2, true: 3} | tojson }}",
    "{{ {'a': 1}['a'] }} {{ [1, 2, 3][1:] }} {{ [1, 2, 3][::2] }} {{ [1, 2, 3][-2:] }} {{ 'abcdef'[1:-1:2] }} {{ l[10:] }}",
    # statements
    "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
    "{% for x in l %}{{ loop.previtem }}-{{ loop.nextitem }}|{% endfor %}", "{% for x in [] %}a{% else %}empty{% endfor %}",
    "{% for x in l if x > 1 %}{{ x }}{{ loop.index }}{{ loop.last }} {% endfor %}", "{% for x in l %}{% if x == 1 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for x in l %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for k in d %}{{ k }}{% endfor %} {% for c in 'héj' %}[{{ c }}]{% endfor %} {% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}",
    "{% for x in l %}{{ loop.cycle('odd', 'even') }} {% endfor %}{% for x in [1, 1, 2] %}{{ loop.changed(x) }}{% endfor %}",
    "{% set x = 1 %}{% for i in l %}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}",
    "{% set ns = namespace(total=0, items=[]) %}{% for i in l %}{% set ns.total = ns.total + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.total }} {{ ns.items }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t2 = (3, 4) %}{{ t2 }}", "{% set blk %}inner {{ n }}{% endset %}[{{ blk }}]",
    "{% set blk | upper %}shout {{ s }}{% endset %}{{ blk }}", "{% if fa %}a{% elif none %}b{% elif n %}c{% else %}d{% endif %}",
    "{% macro greet(name, greeting='Hi') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', greeting='Yo') }} {{ greet('C', 'Hey') }}",
    "{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(5) }}",
    "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}body {{ n }}{% endcall %}",
    "{% macro m() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, k=3) }}",
    "{% filter upper %}filtered {{ s }}{% endfilter %}", "{% with a = 5, b = n %}{{ a + b }}{% endwith %}{{ a }}",
    "{% for m in msgs %}{% if m.role == 'user' %}U:{{ m.content }}{% else %}A:{{ m.content }}{% endif %}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for m in msgs[::-1] %}{{ m.role[0] }}{% endfor %} {{ msgs | length - 1 }} {{ (msgs | length) - 1 }}",
    "{{ range(5) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }} {{ dict(a=1, b='x') }} {{ namespace(a=1).a }}",
    "{% set d2 = {'k': 'v'} %}{{ d2.k }}{{ d2['k'] }}{% set l2 = l + [9] %}{{ l2 }}{{ l2 | length }}",
    "{{ 'abc' if 'b' in 'abc' else 'no' }} {{ (1 if fa else 2) + 3 }} {{ -n + 2 }} {{ n * -1 }} {{ not t or fa }}",
    "{{ s[0] + s[-1] }} {{ u[0:3] | upper }} {{ (u | list)[2] }} {{ l[0] * 2 }} {{ msgs[-1]['extra'][1] }}",
    # errors
    "{{ raise_exception('custom failure: ' ~ n) }}", "{{ undefined_thing.attr }}", "{{ 1 + 'a' }}", "{{ 'a' + 1 }}",
    "{{ 1 / 0 }}", "{{ n | tojson }}{{ undefined_thing | tojson }}", "{{ none | length }}", "{{ l.append(4) }}", "{{ d.update({}) }}",
    "{% for x in none %}{% endfor %}", "{{ range(100001) | length }}", "{% set a, b = [1] %}", "{{ 'x'.nope() }}",
    "{{ s | upper(1) }}", "{{ s | trim(chars='H', z=1) }}", "{{ l | join(',', d='x') }}", "{{ n is odd(1) }}",
    "{{ n is divisibleby }}",
    # lexer corner cases
    "a\t\t{% if t %}\tb{% endif %}\t\nc", "  {{ n }}  {% if t %}x{% endif %}", "x\n\t  {# c -#}\n\n  y",
    "{%- raw -%}  {{ x }}  {%- endraw -%}  after", "a  {%- raw %} r {% endraw +%}\nb", "{%+ if t %}a{% endif %}",
    "line\n   {%- if t -%}   \n\n  in  \n  {%- endif -%}\n  out", "{% if t %}{% if t %}\n\n{% endif %}\n{% endif %}\nz",
    "{{ '{{' }} {{ '}}' }} {{ {'a': {'b': 1}} }} {{ '%}' }}", "{{\n n\n }}", "{%\nif t\n%}y{%\nendif\n%}",
    "a{#\nmultiline\ncomment\n#}b", "{{ 'a' ~ 'b' ~ 1 + 2 }}", "{{ 1 if t }}", "{{ [1,2,3,][0] }} {{ {'a':1,}['a'] }}",
    "\n\n\n", "", "   ", "{% for x in l %}\n  {{ x }}\n{% endfor %}\n", "{%- for x in l -%}\n  {{ x }}\n{%- endfor -%}\n",
    "{{ 1_000 + 0.5e1 + 1E2 }} {{ 0x10 if false else 7 }}",
    "{% set x %}\n  block\n{% endset %}[{{ x }}]", "{% macro m() -%}\n  body\n{%- endmacro %}[{{ m() }}]",
    "{{ '\\n' }}|{{ 'tab\\there' }}|{{ '\\x41\\101' }}|{{ 'q\\'q' }}|{{ \"d\\\"d\" }}",
    "a\u00a0{% if t %}x{% endif %}", "line\n\u3000 {% if t %}x{% endif %}", "a \u2028 {%- if t -%} \u00a0\u2003 b{% endif %}",
    "{{ 1 -}}\u00a0\u0085\n z", "x\u00a0\n{#- c -#}\u1680y", "\u00a0{%+ if t %}k{% endif %}",
    "{{ 'straße ﬁne ǆemal İstanbul ŉ' | upper }}|{{ 'ﬁx ǆa' | title }}|{{ 'ǆa ﬁx'.title() }}|{{ 'ǆa'.capitalize() }}|{{ 'İ' | lower }}",
    "{% for g in msgs | groupby('role') %}{{ g.grouper }}:{{ g.list | map(attribute='content') | join(',') }};{% endfor %}",
    "{% for k, items in words | groupby('0') %}{{ k }}={{ items }};{% endfor %}{{ msgs | groupby('role') | length }}",
    "{{ l | slice(2) | list }} {{ words | slice(3, 'X') | list }} {{ range(7) | slice(3) | list }}",
    "{{ 'a long sentence that goes on and on' | truncate(15) }}|{{ 'short' | truncate(9) }}|{{ 'abcdefghijklmnop' | truncate(10, true) }}|{{ 'a b c d e f g h i' | truncate(10, false, '!', 0) }}",
    "{% for x in tree recursive %}[{{ x.name }}{{ loop.depth }}{% if x.kids %}({{ loop(x.kids) }}){% endif %}]{% endfor %}",
    "{% for x in tree recursive %}{{ loop.depth0 }}{{ loop.index }}{% if x.kids %}{{ loop(x.kids) | upper }}{% endif %}{% else %}none{% endfor %}",
    "{% for x in l %}{{ loop(l) }}{% endfor %}",
    # scoping
    "{% macro m() %}{{ x }}{% endmacro %}{% set x = 5 %}{{ m() }}",
    "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}",
    "{% for i in [1] %}{% set y = 3 %}{% endfor %}[{{ y }}]", "{% if true %}{% set z = 4 %}{% endif %}{{ z }}",
    "{% macro m() %}{% set q = 1 %}{% endmacro %}{{ m() }}[{{ q }}]",
    "{% for i in [1, 2] %}{% macro m() %}{{ i }}{% endmacro %}{{ m() }}{% endfor %}",
    "{% set ns = namespace(x=1) %}{% macro m() %}{% set ns.x = 2 %}{% endmacro %}{{ m() }}{{ ns.x }}",
    "{% with %}{% set w = 1 %}{% endwith %}[{{ w }}]",
    "{% for x in [1] %}{{ loop.index }}{% for y in [1, 2] %}{{ loop.index }}{% endfor %}{{ loop.index }}{% endfor %}",
    "{% macro m() %}{{ caller(5) }}{% endmacro %}{% call(v) m() %}got {{ v }}{% endcall %}",
    "{% set x = 1 %}{% for i in l %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}",
    "{% for i in l %}{% set acc = (acc | default(0)) + i %}{{ acc }}{% endfor %}",
    "{% macro m(a) %}{{ a }}{{ l | length }}{% endmacro %}{% set l = [1] %}{{ m(2) }}",
    "{% macro outer() %}{% macro inner() %}in{% endmacro %}[{{ inner() }}]{% endmacro %}{{ outer() }}",
    "{% set m = msgs[0] %}{% for m in msgs %}{% endfor %}{{ m.role }}",
    "{{ loop }}|{% for x in l %}{% endfor %}{{ x }}",
    # syntax / compile errors
    "{{ 1 +  }}", "{% if x %}no end", "{% for x in %}{% endfor %}", "{{ x | nosuchfilter }}", "{{ x is nosuchtest }}",
    "{% endif %}", "{{ 'unterminated }}", "{% unknowntag %}", "{{ (1 }}", "{% if t %}{% else %}{% else %}{% endif %}",
    "{# never closed", "{% macro m( %}{% endmacro %}",
]


def run(cases):
    inp = "".join(json.dumps({"template": t, "ctx": CTX}, ensure_ascii=False) + "\n" for t in cases)
    r = subprocess.run([driver_path(), "-"], input=inp.encode(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return [json.loads(x) for x in r.stdout.decode().split("\n")[:-1]]


def ref(tpl):
    try:
        return {"ok": True, "text": jinja_ref.render_ctx(tpl, CTX)}
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:
            return {"ok": False, "raise": str(e)}
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    except Exception as e:  # noqa: BLE001 - any Python error must be an error in C too
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def test_features_match_jinja2():
    got = run(CASES)
    bad = []
    for tpl, res in zip(CASES, got):
        want = ref(tpl)
        if want["ok"] != res.get("ok") or (want["ok"] and want["text"] != res["text"]) or \
                ("raise" in want and want["raise"] != res.get("error")):
            bad.append("template %r\n   jinja2: %r\n   C:      %r" % (tpl, want, res))
    assert not bad, "%d of %d differ:\n%s" % (len(bad), len(CASES), "\n".join(bad))

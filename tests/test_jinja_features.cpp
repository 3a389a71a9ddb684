// The chat-template interpreter's language features one by one (issue 31, tag [jinja]): whitespace
// control, literals, operators, scoping, loops, macros, filters, tests, methods, globals, Undefined,
// printing, errors. Each expected output is what Debian's python3-jinja2 (3.1.2, set up as
// transformers sets it up: tests/jinja_oracle.py) rendered for the template, recorded here so these
// run without Python; test_jinja.cpp runs the oracle live over the fixture chat templates.
#include "catch.h"
#include "env_var.h"

#include <string>

#include <nlohmann/json.hpp>

#include "jinja.h"
#include "linearnexus/error.h"

namespace {

using ojson = nlohmann::ordered_json;
namespace jj = linearnexus::jinja;

// A template, a context and what python3-jinja2 rendered (null: it raised; raised: the message of a
// raise_exception, which ours must carry).
struct Feature {
  const char* tmpl;
  const char* context;
  const char* expected;
  const char* raised;
};

// Generated from python3-jinja2 3.1.2 through tests/jinja_oracle.py.
const Feature kFeatures[] = {
    // whitespace control / trim_blocks / lstrip_blocks
    {R"~~(a
  {% if true %}
  b
  {% endif %}
c)~~",
     R"~~({})~~", R"~~(a
  b
c)~~",
     ""},
    {R"~~(a  {%- if true -%}  b  {%- endif -%}  c)~~", R"~~({})~~", R"~~(abc)~~", ""},
    {R"~~(x {{- ' y ' -}} z)~~", R"~~({})~~", R"~~(x y z)~~", ""},
    {R"~~(  {%+ if true %}k{% endif %})~~", R"~~({})~~", R"~~(  k)~~", ""},
    {R"~~({% if true +%}
k{% endif %})~~",
     R"~~({})~~", R"~~(
k)~~",
     ""},
    {R"~~(a {# c #}
b
  {# indented #}
c {#- x -#} d)~~",
     R"~~({})~~", R"~~(a b
cd)~~",
     ""},
    {R"~~({% raw %}{{ not }} {% evaluated %}{% endraw %}!)~~", R"~~({})~~", R"~~({{ not }} {% evaluated %}!)~~", ""},
    {R"~~(  {%- raw %} x {% endraw -%}  y)~~", R"~~({})~~", R"~~( x y)~~", ""},
    {R"~~(line
)~~",
     R"~~({})~~", R"~~(line)~~", ""},
    {R"~~(line

)~~",
     R"~~({})~~", R"~~(line
)~~",
     ""},
    {"a\015\nb\015c", R"~~({})~~", R"~~(a
b
c)~~",
     ""},
    {R"~~({{ 'x' }}
{% if true %}
{{ 'y' }}
{% endif %}
)~~",
     R"~~({})~~", R"~~(x
y
)~~",
     ""},
    {R"~~({% for i in [1,2] %}
  - {{ i }}
{% endfor %}
)~~",
     R"~~({})~~", R"~~(  - 1
  - 2
)~~",
     ""},
    {R"~~(		{% if true %}tab{% endif %})~~", R"~~({})~~", R"~~(tab)~~", ""},
    {R"~~(x  {% if true %}y{% endif %})~~", R"~~({})~~", R"~~(x  y)~~", ""},
    // literals
    {R"~~({{ 1 }}|{{ -1 }}|{{ 1.5 }}|{{ 1e3 }}|{{ 1_000 }}|{{ 0x1F }}|{{ 0o17 }}|{{ 0b101 }}|{{ 2.50 }})~~",
     R"~~({})~~", R"~~(1|-1|1.5|1000.0|1000|31|15|5|2.5)~~", ""},
    {R"~~({{ 'a' "b" 'c' }}|{{ 'it\'s' }}|{{ "\t\x41\u00e9\U0001F600\101" }}|{{ '\d\s' }})~~", R"~~({})~~",
     R"~~(abc|it's|	Aé😀A|\d\s)~~", ""},
    {R"~~({{ [1, 'a', [2]] }}|{{ (1,) }}|{{ () }}|{{ {'k': 1, 'j': [none, true, false]} }}|{{ [] }}|{{ {} }})~~",
     R"~~({})~~", R"~~([1, 'a', [2]]|(1,)|()|{'k': 1, 'j': [None, True, False]}|[]|{})~~", ""},
    {R"~~({{ true }}{{ True }}{{ false }}{{ none }}{{ None }})~~", R"~~({})~~", R"~~(TrueTrueFalseNoneNone)~~", ""},
    // arithmetic
    {R"~~({{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -2 }})~~",
     R"~~({})~~", R"~~(10 -3 21 3.5 3 -4 1 2 1024 0.25)~~", ""},
    {R"~~({{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ 2.0 * 3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 10 / 4 }} {{ 1e16 }} {{ 1e-5 }} {{ 123456.789 }})~~",
     R"~~({})~~", R"~~(2.5 0.30000000000000004 0.3333333333333333 6.0 3.0 0.5 2.5 1e+16 1e-05 123456.789)~~", ""},
    {R"~~({{ -2 ** 2 }} {{ (-2) ** 2 }} {{ 2 * 3 + 4 }} {{ 2 * (3 + 4) }} {{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }})~~",
     R"~~({})~~", R"~~(4 4 10 14 5 64)~~", ""},
    {R"~~({{ 'ab' * 3 }}{{ 3 * 'x' }}{{ [1] * 3 }}{{ 'a' + 'b' }}{{ [1] + [2] }}{{ (1,) + (2,) }})~~", R"~~({})~~",
     R"~~(abababxxx[1, 1, 1]ab[1, 2](1, 2))~~", ""},
    {R"~~({{ true + 1 }} {{ true * 5 }} {{ 1 + 2.0 }})~~", R"~~({})~~", R"~~(2 5 3.0)~~", ""},
    {R"~~({{ 1 ~ 2 ~ 'x' ~ none ~ true ~ 1.0 }})~~", R"~~({})~~", R"~~(12xNoneTrue1.0)~~", ""},
    // comparisons & logic
    {R"~~({{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ [1,2] < [1,3] }} {{ 'abc' < 'abd' }})~~",
     R"~~({})~~", R"~~(True True False True True True False True True)~~", ""},
    {R"~~({{ 'b' in 'abc' }} {{ 2 in [1,2] }} {{ 'k' in {'k':1} }} {{ 'z' not in 'abc' }} {{ 3 not in [1] }} {{ x in [1] }})~~",
     R"~~({})~~", R"~~(True True True True True False)~~", ""},
    {R"~~({{ 1 and 2 }}|{{ 0 and 2 }}|{{ 0 or 'x' }}|{{ '' or [] }}|{{ not 0 }}|{{ not 'a' }}|{{ none or 'd' }})~~",
     R"~~({})~~", R"~~(2|0|x|[]|True|False|d)~~", ""},
    {R"~~({{ not 1 == 2 }} {{ not true and false }} {{ false or true and false }})~~", R"~~({})~~",
     R"~~(True False False)~~", ""},
    {R"~~({{ 'y' if 1 else 'n' }}{{ 'y' if 0 else 'n' }}{{ 'y' if 0 }}|{{ 1 if false else 2 if false else 3 }})~~",
     R"~~({})~~", R"~~(yn|3)~~", ""},
    // variables and scoping
    {R"~~({% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }})~~", R"~~({})~~",
     R"~~(12121)~~", ""},
    {R"~~({% for i in [1,2] %}{% if i == 1 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}[{{ y }}])~~", R"~~({})~~",
     R"~~([5][][])~~", ""},
    {R"~~({% if true %}{% set z = 3 %}{% endif %}{{ z }})~~", R"~~({})~~", R"~~(3)~~", ""},
    {R"~~({% set a, b = 1, 2 %}{{ a }}{{ b }}{% set (c, d) = ['x', 'y'] %}{{ c }}{{ d }})~~", R"~~({})~~",
     R"~~(12xy)~~", ""},
    {R"~~({% set ns = namespace(n=0, items=[]) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.n }}{{ ns.items }})~~",
     R"~~({})~~", R"~~(6[0, 1, 2, 3])~~", ""},
    {R"~~({% set ns = namespace() %}{% set ns.found = false %}{{ ns.found }}{{ ns.missing is defined }})~~",
     R"~~({})~~", R"~~(FalseFalse)~~", ""},
    {R"~~({% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}])~~", R"~~({})~~", R"~~(3[])~~", ""},
    {R"~~({% set s %}  captured {{ 1 + 1 }}  {% endset %}[{{ s }}]{% set t | trim | upper %}  hi  {% endset %}[{{ t }}])~~",
     R"~~({})~~", R"~~([  captured 2  ][HI])~~", ""},
    {R"~~({% set messages = messages[1:] %}{{ messages|length }})~~",
     R"~~({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]})~~", R"~~(1)~~",
     ""},
    // loops
    {R"~~({% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %})~~",
     R"~~({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]})~~",
     R"~~(1021TrueFalse2;2110FalseTrue2;)~~", ""},
    {R"~~({% for i in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a','b') }}|{% endfor %})~~",
     R"~~({})~~", R"~~(-2-a|1-3-b|2--a|)~~", ""},
    {R"~~({% for i in [1,1,2] %}{{ loop.changed(i) }}{% endfor %})~~", R"~~({})~~", R"~~(TrueFalseTrue)~~", ""},
    {R"~~({% for i in [1,2,3,4] if i is even %}{{ i }}{{ loop.index }}{{ loop.length }}{% endfor %})~~", R"~~({})~~",
     R"~~(212422)~~", ""},
    {R"~~({% for i in [] %}x{% else %}empty{% endfor %}{% for i in [1] %}x{% else %}empty{% endfor %})~~", R"~~({})~~",
     R"~~(emptyx)~~", ""},
    {R"~~({% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %})~~",
     R"~~({})~~", R"~~(a=1;b=2;xy)~~", ""},
    {R"~~({% for c in 'héllo' %}[{{ c }}]{% endfor %})~~", R"~~({})~~", R"~~([h][é][l][l][o])~~", ""},
    {R"~~({% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %})~~",
     R"~~({})~~", R"~~(0134)~~", ""},
    {R"~~({% for i in [1,2] %}{% for j in [3,4] %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.index }}|{% endfor %})~~",
     R"~~({})~~", R"~~(113 214 1|123 224 2|)~~", ""},
    {R"~~({% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(2, 8, 3) %}{{ i }}{% endfor %}{% for i in range(5, 0, -2) %}{{ i }}{% endfor %})~~",
     R"~~({})~~", R"~~(01225531)~~", ""},
    {R"~~({% for a, b in [(1, 2), [3, 4]] %}{{ a }}{{ b }}{% endfor %})~~", R"~~({})~~", R"~~(1234)~~", ""},
    {R"~~({% for x in undefined_thing %}x{% endfor %}ok)~~", R"~~({})~~", R"~~(ok)~~", ""},
    // macros
    {R"~~({% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', 'Hi') }} {{ greet(greeting='Yo', name='Cy') }})~~",
     R"~~({})~~", R"~~(Hello, Ann! Hi, Bo! Yo, Cy!)~~", ""},
    {R"~~({% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }})~~", R"~~({})~~",
     R"~~(1(2, 3){'k': 4})~~", ""},
    {R"~~({% macro m(a, b) %}[{{ a }}|{{ b is defined }}]{% endmacro %}{{ m(1) }})~~", R"~~({})~~", R"~~([1|False])~~",
     ""},
    {R"~~({% macro outer() %}<{{ caller() }}>{% endmacro %}{% call outer() %}inside{% endcall %})~~", R"~~({})~~",
     R"~~(<inside>)~~", ""},
    {R"~~({% macro list(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) list([1,2]) %}({{ x }}){% endcall %})~~",
     R"~~({})~~", R"~~((1)(2))~~", ""},
    {R"~~({% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }})~~",
     R"~~({})~~", R"~~(120)~~", ""},
    {R"~~({% set x = 5 %}{% macro m() %}{% set x = 6 %}{{ x }}{% endmacro %}{{ m() }}{{ x }})~~", R"~~({})~~",
     R"~~(65)~~", ""},
    {R"~~({% macro m() %}{{ late }}{% endmacro %}{% set late = 'L' %}{{ m() }})~~", R"~~({})~~", R"~~(L)~~", ""},
    {R"~~({% filter upper %}abc {{ 'def' }}{% endfilter %})~~", R"~~({})~~", R"~~(ABC DEF)~~", ""},
    // filters
    {R"~~({{ ' a b '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'Hello'|upper }}|{{ 'Hello'|lower }}|{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }})~~",
     R"~~({})~~", R"~~(a b|a|HELLO|hello|Hello World|Hello)~~", ""},
    {R"~~({{ [1,2,3]|length }}{{ 'héllo'|length }}{{ {'a':1}|length }}{{ [1,2]|count }}{{ x|length }})~~", R"~~({})~~",
     R"~~(35120)~~", ""},
    {R"~~({{ [3,1,2]|sort }}{{ ['b','A','c']|sort }}{{ ['b','A','c']|sort(case_sensitive=true) }}{{ [3,1,2]|sort(reverse=true) }})~~",
     R"~~({})~~", R"~~([1, 2, 3]['A', 'b', 'c']['A', 'b', 'c'][3, 2, 1])~~", ""},
    {R"~~({{ [{'n':'b','v':1},{'n':'a','v':2}]|sort(attribute='n')|map(attribute='v')|list }})~~", R"~~({})~~",
     R"~~([2, 1])~~", ""},
    {R"~~({{ ['a','b']|join }}{{ ['a','b']|join(', ') }}{{ [1,2]|join('-') }}{{ [{'x':'p'},{'x':'q'}]|join(',', attribute='x') }})~~",
     R"~~({})~~", R"~~(aba, b1-2p,q)~~", ""},
    {R"~~({{ [1,2,3]|first }}{{ [1,2,3]|last }}{{ 'abc'|first }}{{ 'abc'|last }}{{ []|first is defined }})~~",
     R"~~({})~~", R"~~(13acFalse)~~", ""},
    {R"~~({{ 'ab'|list }}{{ {'a':1}|list }}{{ (1,2)|list }}{{ range(3)|list }})~~", R"~~({})~~",
     R"~~(['a', 'b']['a'][1, 2][0, 1, 2])~~", ""},
    {R"~~({{ {'b':1,'a':2}|items|list }}{{ {'b':1,'A':2,'a':0}|dictsort }}{{ {'b':1,'a':2}|dictsort(by='value') }}{{ {'b':1,'a':2}|dictsort(reverse=true) }})~~",
     R"~~({})~~", R"~~([('b', 1), ('a', 2)][('A', 2), ('a', 0), ('b', 1)][('b', 1), ('a', 2)][('b', 1), ('a', 2)])~~",
     ""},
    {R"~~({{ x|default('d') }}|{{ none|default('d') }}|{{ ''|default('d') }}|{{ ''|default('d', true) }}|{{ 0|d('z', true) }})~~",
     R"~~({})~~", R"~~(d|None||d|z)~~", ""},
    {R"~~({{ messages|selectattr('role', 'equalto', 'user')|list|length }}{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }})~~",
     R"~~({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]})~~",
     R"~~(1[' yo '])~~", ""},
    {R"~~({{ [1,2,3,4]|select('odd')|list }}{{ [1,2,3,4]|reject('odd')|list }}{{ [0,1,'',none,'a']|select|list }}{{ [1,5,10]|select('>', 3)|list }})~~",
     R"~~({})~~", R"~~([1, 3][2, 4][1, 'a'][5, 10])~~", ""},
    {R"~~({{ [{'a':1},{'b':2}]|selectattr('a')|list }}{{ [{'a':1},{'b':2}]|selectattr('a', 'defined')|list }}{{ [{'a':1},{'b':2}]|rejectattr('a', 'defined')|list }})~~",
     R"~~({})~~", R"~~([{'a': 1}][{'a': 1}][{'b': 2}])~~", ""},
    {R"~~({{ [1,2]|map('string')|join(',') }}{{ ['a','b']|map('upper')|list }}{{ [{'a':{'b':1}}]|map(attribute='a.b')|list }}{{ [[1,2]]|map(attribute='0')|list }})~~",
     R"~~({})~~", R"~~(1,2['A', 'B'][1][1])~~", ""},
    {R"~~({{ 'a-b-a'|replace('a', 'x') }}{{ 'aaa'|replace('a', 'b', 2) }}{{ 5|replace('5', 'five') }})~~", R"~~({})~~",
     R"~~(x-b-xbbafive)~~", ""},
    {R"~~({{ [1,2,3]|reverse|list }}{{ 'abc'|reverse }}{{ [3,1,2]|max }}{{ [3,1,2]|min }}{{ ['b','A']|max }}{{ [{'v':2},{'v':5}]|max(attribute='v') }})~~",
     R"~~({})~~", R"~~([3, 2, 1]cba31b{'v': 5})~~", ""},
    {R"~~({{ [1,2,3]|sum }}{{ [1.5,2]|sum }}{{ [{'v':2},{'v':5}]|sum(attribute='v') }}{{ [1]|sum(start=10) }})~~",
     R"~~({})~~", R"~~(63.5711)~~", ""},
    {R"~~({{ ['a','A','b','a']|unique|list }}{{ ['a','A']|unique(case_sensitive=true)|list }})~~", R"~~({})~~",
     R"~~(['a', 'b']['a', 'A'])~~", ""},
    {R"~~({{ -3|abs }}{{ (-3.5)|abs }}{{ 2.567|round }}{{ 2.567|round(2) }}{{ 2.5|round }}{{ 3.5|round }}{{ 2.567|round(1, 'floor') }}{{ 2.1|round(0, 'ceil') }})~~",
     R"~~({})~~", R"~~(33.53.02.572.04.02.53.0)~~", ""},
    {R"~~({{ '42'|int }}{{ ' 7 '|int }}{{ '4.7'|int }}{{ 'x'|int }}{{ 'x'|int(9) }}{{ 3.9|int }}{{ true|int }}{{ '0x1A'|int(0, 16) }}{{ '1_000'|int }})~~",
     R"~~({})~~", R"~~(42740931261000)~~", ""},
    {R"~~({{ '1.5'|float }}{{ 'x'|float }}{{ 3|float }}{{ '1e3'|float }}{{ ' 2 '|float }})~~", R"~~({})~~",
     R"~~(1.50.03.01000.02.0)~~", ""},
    {R"~~({{ 5|string ~ 'x' }}{{ none|string }}{{ [1,'a']|string }}{{ 1.0|string }})~~", R"~~({})~~",
     R"~~(5xNone[1, 'a']1.0)~~", ""},
    {R"~~({{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb'|indent(1, blank=true) }}|{{ 'a\nb'|indent('> ') }})~~",
     R"~~({})~~", R"~~(a
    b

    c|  a
  b|a
 
 b|a
> b)~~",
     ""},
    {R"~~({{ 'abc'|center(9) }}|{{ 'ab'|center(7) }}|{{ 'a b  c'|wordcount }}|{{ '%s=%d'|format('x', 5) }}|{{ '<a & b>'|e }}|{{ 'x'|safe }})~~",
     R"~~({})~~", R"~~(   abc   |   ab  |3|x=5|&lt;a &amp; b&gt;|x)~~", ""},
    {R"~~({{ 'hello world foo'|truncate(9) }}|{{ 'hello world foo bar baz'|truncate(11, true) }}|{{ 'short'|truncate(10) }})~~",
     R"~~({})~~", R"~~(hello...|hello wo...|short)~~", ""},
    {R"~~({{ [1,2,3,4,5]|batch(2)|list }}{{ [1,2,3]|batch(2, 0)|list }})~~", R"~~({})~~",
     R"~~([[1, 2], [3, 4], [5]][[1, 2], [3, 0]])~~", ""},
    {R"~~({{ {'a': 'x'}|attr('a') }}|{{ 'abc'|attr('upper') is callable }})~~", R"~~({})~~", R"~~(|True)~~", ""},
    // tojson
    {R"~~({{ {'b': 1, 'a': [1, 2.5, none, true, 'é"\n']}|tojson }})~~", R"~~({})~~",
     R"~~({"b": 1, "a": [1, 2.5, null, true, "é\"\n"]})~~", ""},
    {R"~~({{ {'b': {'c': []}, 'a': {}}|tojson(indent=2) }}|{{ [1, [2]]|tojson(indent=4) }})~~", R"~~({})~~", R"~~({
  "b": {
    "c": []
  },
  "a": {}
}|[
    1,
    [
        2
    ]
])~~",
     ""},
    {R"~~({{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ [1, {'a': 2}]|tojson(separators=(',', ':')) }}|{{ 'é😀'|tojson(ensure_ascii=true) }})~~",
     R"~~({})~~", R"~~({"a": 2, "b": 1}|[1,{"a":2}]|"\u00e9\ud83d\ude00")~~", ""},
    {R"~~({{ tools|tojson }})~~",
     R"~~({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"z": 1, "a": 2.0, "big": 12345678901234}}}]})~~",
     R"~~([{"type": "function", "function": {"name": "f", "parameters": {"z": 1, "a": 2.0, "big": 12345678901234}}}])~~",
     ""},
    {R"~~({{ 1e100|tojson }}{{ 0.1|tojson }}{{ -0.0|tojson }}{{ 3|tojson }}{{ 'x\u0001\u007f'|tojson }})~~",
     R"~~({})~~", "1e+1000.1-0.03\"x\\u0001\177\"", ""},
    // tests
    {R"~~({{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 1 is none }}{{ 'a' is string }}{{ 1 is string }}{{ {} is mapping }}{{ [] is mapping }})~~",
     R"~~({})~~", R"~~(FalseTrueTrueFalseTrueFalseTrueFalse)~~", ""},
    {R"~~({{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ x is iterable }}{{ [] is sequence }}{{ {} is sequence }}{{ 1 is number }}{{ 1.5 is float }}{{ 1 is integer }}{{ true is integer }}{{ true is boolean }})~~",
     R"~~({})~~", R"~~(TrueTrueFalseTrueTrueTrueTrueTrueTrueFalseTrue)~~", ""},
    {R"~~({{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'Abc' is lower }})~~",
     R"~~({})~~", R"~~(TrueFalseTrueFalseTrueTrueFalse)~~", ""},
    {R"~~({{ 1 is eq 1 }}{{ 1 is equalto 2 }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}{{ 2 is ge 2 }}{{ 2 is gt 1 }}{{ 1 is le 0 }}{{ 2 is in [1,2] }})~~",
     R"~~({})~~", R"~~(TrueFalseTrueTrueTrueTrueFalseTrue)~~", ""},
    {R"~~({{ true is true }}{{ 1 is true }}{{ false is false }}{{ none is sameas none }}{{ x is not defined }}{{ 1 is not none }}{{ 'trim' is filter }}{{ 'odd' is test }}{{ range is callable }})~~",
     R"~~({})~~", R"~~(TrueFalseTrueTrueTrueTrueTrueTrueTrue)~~", ""},
    // string methods
    {R"~~({{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\n\nhi'.lstrip('\n') }})~~",
     R"~~({})~~", R"~~(x|x  |  x|hi|hi)~~", ""},
    {R"~~({{ 'a,b,,c'.split(',') }}{{ '  a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'a-b-c'.rsplit('-', 1) }}{{ 'a b c'.rsplit(none, 1) }}{{ 'x</think>y</think>z'.split('</think>')[-1] }})~~",
     R"~~({})~~", R"~~(['a', 'b', '', 'c']['a', 'b']['a', 'b c']['a-b', 'c']['a b', 'c']z)~~", ""},
    {R"~~({{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}{{ 'abc'.startswith('b', 1) }}{{ 'abc'.endswith('z') }})~~",
     R"~~({})~~", R"~~(TrueTrueTrueTrueFalse)~~", ""},
    {R"~~({{ 'a-b'.replace('-', '+') }}{{ 'aaa'.replace('a', 'b', 1) }}{{ 'ab'.replace('', '|') }})~~", R"~~({})~~",
     R"~~(a+bbaa|a|b|)~~", ""},
    {R"~~({{ 'héllo wörld'.upper() }}|{{ 'ÀÉÎ'.lower() }}|{{ "o'neil mcdonald 3rd".title() }}|{{ 'éCOLE'.capitalize() }}|{{ 'привет мир'.title() }})~~",
     R"~~({})~~", R"~~(HÉLLO WÖRLD|àéî|O'Neil Mcdonald 3Rd|École|Привет Мир)~~", ""},
    {R"~~({{ 'hello'.find('l') }}{{ 'hello'.rfind('l') }}{{ 'hello'.find('z') }}{{ 'héllo'.find('l') }}{{ 'hello'.count('l') }}{{ ', '.join(['a', 'b']) }})~~",
     R"~~({})~~", R"~~(23-122a, b)~~", ""},
    {R"~~({{ 'a\nb\r\nc'.splitlines() }}{{ 'prefix-x'.removeprefix('prefix-') }}{{ 'x.py'.removesuffix('.py') }}{{ '123'.isdigit() }}{{ 'ab1'.isalpha() }}{{ '  '.isspace() }})~~",
     R"~~({})~~", R"~~(['a', 'b', 'c']xxTrueFalseTrue)~~", ""},
    {R"~~({{ 'abc'[0] }}{{ 'abc'[-1] }}{{ 'abc'[1:] }}{{ 'abc'[:-1] }}{{ 'abc'[::-1] }}{{ 'héllo'[1:3] }}{{ 'abcdef'[::2] }}{{ 'abc'[5] is defined }}{{ 'abc'[10:] }})~~",
     R"~~({})~~", R"~~(acbcabcbaélaceFalse)~~", ""},
    {R"~~({{ [1,2,3][0] }}{{ [1,2,3][-1] }}{{ [1,2,3][1:] }}{{ [1,2,3][::-1] }}{{ [1,2,3][5] is defined }}{{ (1,2,3)[1:] }}{{ [[1,2]].0.1 }})~~",
     R"~~({})~~", R"~~(13[2, 3][3, 2, 1]False(2, 3)2)~~", ""},
    // dict methods and access
    {R"~~({{ d.get('a') }}{{ d.get('z') }}{{ d.get('z', 0) }}{{ d.keys()|list }}{{ d.values()|list }}{{ d.items()|list }})~~",
     R"~~({"d": {"a": 1, "b": 2}})~~", R"~~(1None0['a', 'b'][1, 2][('a', 1), ('b', 2)])~~", ""},
    {R"~~({{ d.a }}{{ d['a'] }}{{ d.missing is defined }}{{ d['missing'] is defined }}{{ d.items is defined }}{{ d['items'] }})~~",
     R"~~({"d": {"a": 1, "items": "I"}})~~", R"~~(11FalseFalseTrueI)~~", ""},
    {R"~~({{ m.content }}{{ m['content'] }}{{ m.tool_calls is defined }}{{ m.content|trim }})~~",
     R"~~({"m": {"role": "assistant", "content": " hi "}})~~", R"~~( hi  hi Falsehi)~~", ""},
    {R"~~({{ [1,2,1].count(1) }}{{ [1,2,3].index(2) }})~~", R"~~({})~~", R"~~(21)~~", ""},
    // globals
    {R"~~({{ range(3) is iterable }}{{ dict(a=1, b='x') }}{{ dict({'c': 2}, d=3) }}{% set j = joiner('|') %}{% for i in [1,2,3] %}{{ j() }}{{ i }}{% endfor %})~~",
     R"~~({})~~", R"~~(True{'a': 1, 'b': 'x'}{'c': 2, 'd': 3}1|2|3)~~", ""},
    {R"~~({{ namespace(a=1).a }}{{ namespace({'b': 2}).b }})~~", R"~~({})~~", R"~~(12)~~", ""},
    // undefined semantics
    {R"~~([{{ u }}][{{ u ~ 'x' }}][{{ u|length }}][{{ u|list }}][{{ u|join }}][{{ u|upper }}][{{ u|trim }}][{{ not u }}][{{ u == u }}][{{ u == none }}])~~",
     R"~~({})~~", R"~~([][x][0][[]][][][][True][True][False])~~", ""},
    {R"~~({{ (none).attr is defined }}{{ none['x'] is defined }}{{ 1['x'] is defined }})~~", R"~~({})~~",
     R"~~(FalseFalseFalse)~~", ""},
    // printing
    {R"~~({{ [1.0, 'a\'b', "c\"d", {'k': (1,)}] }}{{ ('a',) }})~~", R"~~({})~~",
     R"~~([1.0, "a'b", 'c"d', {'k': (1,)}]('a',))~~", ""},
    {R"~~({{ 'a', 'b' }})~~", R"~~({})~~", R"~~(('a', 'b'))~~", ""},
    {R"~~({% print 'p', 1 %})~~", R"~~({})~~", R"~~(p1)~~", ""},
    {R"~~({{ 'x\ty\x01é\u00a0' }}{{ ['x\ty\x01é\u00a0\u200b'] }})~~", R"~~({})~~",
     "x\011y\001é\302\240['x\\ty\\x01é\\xa0\\u200b']", ""},
    {R"~~({{ {'a': {'b': [1, {'c': none}]}} }})~~", R"~~({})~~", R"~~({'a': {'b': [1, {'c': None}]}})~~", ""},
    // strftime_now / raise_exception presence
    {R"~~({{ strftime_now('%Y') | length }}{{ raise_exception is defined }})~~", R"~~({})~~", R"~~(4True)~~", ""},
    // SOURCE_DATE_EPOCH stands for now (the test sets it to 180 days after the epoch)
    {R"~~({{ strftime_now('%Y-%m') }})~~", R"~~({})~~", R"~~(1970-06)~~", ""},
    // % formatting
    {R"~~({{ '%s-%s' % ('a', 1) }}|{{ '%5.1f' % 3.14159 }}|{{ '%-*d|' % (5, 3) }}|{{ '%.2s' % 'abc' }}|{{ '%c' % 65 }}|{{ '%x %X %o' % (255, 255, 8) }}|{{ '%e' % 12345.678 }}|{{ '%r' % 'x' }}|{{ '%05d' % -42 }}|{{ '%+d' % 5 }}|{{ '100%%' % () }})~~",
     R"~~({})~~", R"~~(a-1|  3.1|3    ||ab|A|ff FF 10|1.234568e+04|'x'|-0042|+5|100%)~~", ""},
    // more split / strip corners
    {R"~~({{ 'a b  c  '.split(None, 1) }}{{ '  a b c'.rsplit(None, 1) }}{{ ' a b '.split(None, 0) }}{{ 'a,b,c'.split(',', 0) }}{{ 'a,,b'.rsplit(',', 1) }}{{ ''.split() }}{{ ''.split(',') }})~~",
     R"~~({})~~", R"~~(['a', 'b  c  ']['  a b', 'c']['a b ']['a,b,c']['a,', 'b'][][''])~~", ""},
    {"{{ '　x\302\240'.strip() }}|{{ 'é'.strip('é') }}|{{ 'abcabc'.rstrip('cb') }}|{{ '  x'.strip(none) }}",
     R"~~({})~~", R"~~(x||abca|x)~~", ""},
    // more whitespace control
    {R"~~({% for i in [1, 2] -%}
  {{ i }}
{%- endfor %})~~",
     R"~~({})~~", R"~~(12)~~", ""},
    {R"~~(a
  {#- comment -#}
  b)~~",
     R"~~({})~~", R"~~(ab)~~", ""},
    {R"~~(  {% raw -%}
  x
  {%- endraw %}
  y)~~",
     R"~~({})~~", R"~~(x  y)~~", ""},
    {R"~~({% if true %}  
  x{% endif %})~~",
     R"~~({})~~", R"~~(  
  x)~~",
     ""},
    {R"~~(  {{- 'a' }}  {{ 'b' -}}  
  c)~~",
     R"~~({})~~", R"~~(a  bc)~~", ""},
    {R"~~({%- for i in [1] %}
    {% if i %}
        one
    {% endif %}
{% endfor %})~~",
     R"~~({})~~", R"~~(        one
)~~",
     ""},
    {R"~~(x
{%+ if true %}
y{% endif %})~~",
     R"~~({})~~", R"~~(x
y)~~",
     ""},
    // errors that must raise in both
    {R"~~({{ raise_exception('Custom failure message') }})~~", R"~~({})~~", nullptr, R"~~(Custom failure message)~~"},
    {R"~~({% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok)~~",
     R"~~({"messages": [{"role": "system", "content": "s"}]})~~", nullptr, R"~~(System role not supported)~~"},
    {R"~~({{ u.attr }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ u() }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ u + 1 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ none + 'a' }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'a' + 1 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 / 0 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 // 0 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 < 'a' }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ [1].append(2) }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% for x in none %}{% endfor %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ none|length }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% set a, b = [1] %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% set d = {} %}{% set d.x = 1 %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'abc'.nomethod() }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ range(200000)|length }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% macro m(a) %}{% endmacro %}{{ m(1, 2) }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% macro m(a) %}{% endmacro %}{{ m(b=1) }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ [1]|reverse|length }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ x|int }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ x|tojson }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'x'.split('') }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'abc'|truncate(2) }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'a' in none }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 in 'abc' }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'a' is divisibleby 2 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ {'a':1}|items|length }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    // syntax errors
    {R"~~({% if true %}unterminated)~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 + }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% endfor %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% for x in %}{% endfor %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ x|nosuchfilter }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ x is nosuchtest }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% nosuchtag %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 'unterminated }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({# no end)~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ (1 }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ [1, 2) }})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% break %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% include 'x' %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% extends 'x' %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% macro m(a=1, b) %}{% endmacro %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({{ 1 })~~", R"~~({})~~", nullptr, R"~~()~~"},
    {R"~~({% set %})~~", R"~~({})~~", nullptr, R"~~()~~"},
    // generation blocks
    {R"~~({% for m in messages %}{{ m.role }}:{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}
{% endfor %})~~",
     R"~~({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]})~~",
     R"~~(user:hiassistant: yo <end>)~~", ""},
    {R"~~({% generation %}{% endgeneration %}x{% generation %}é{% endgeneration %})~~", R"~~({})~~", R"~~(xé)~~", ""},
};

}  // namespace

TEST_CASE("jinja: each language feature renders as python3-jinja2 does", "[jinja]") {
  const lntest::EnvVar epoch("SOURCE_DATE_EPOCH", "15552000");  // 1970-06-29 (UTC)
  for (const Feature& f : kFeatures) {
    INFO("template: " << f.tmpl << "\ncontext: " << f.context);
    if (f.expected) {
      std::string out;
      try {
        out = jj::ChatTemplate(f.tmpl).render(ojson::parse(f.context));
      } catch (const linearnexus::Error& e) {
        FAIL_CHECK("unexpected error: " << e.what());
        continue;
      }
      CHECK(out == f.expected);
    } else {
      std::string err;
      try {
        jj::ChatTemplate(f.tmpl).render(ojson::parse(f.context));
      } catch (const linearnexus::Error& e) {
        err = e.what();
      }
      CHECK_FALSE(err.empty());
      CHECK(err.rfind("chat template line ", 0) == 0);
      if (*f.raised) CHECK_CONTAINS(err, f.raised);
    }
  }
}

#!/usr/bin/env python3
"""The oracle of tests/test_jinja.cpp: renders chat templates as transformers' apply_chat_template does.

Usage: jinja_oracle.py CASES.json > RESULTS.json
CASES.json is a list of {"template": TEXT, "context": {...}}; each result is, in the same order,
{"text": RENDERED, "generation": [[begin, end], ...]} or {"error": "Type: message"}. Generation spans are
UTF-8 byte offsets into text (the C++ module's unit), one per non-empty {% generation %} block.

The environment is transformers' (utils/chat_template_utils.py, _compile_jinja_template): an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, a
`generation` tag recording where its output lands (as transformers' AssistantTracker does), tojson as
json.dumps(ensure_ascii=False) with indent / separators / sort_keys, and the globals raise_exception and
strftime_now. Exit status 3 when jinja2 cannot be imported (the test then skips).
"""
import json
import os
import sys
from datetime import datetime

try:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError as exc:  # the C++ test prints SKIPPED
    print(f"jinja2 is not importable: {exc}", file=sys.stderr)
    sys.exit(3)


class GenerationTracker(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: the output is kept as is; its position is recorded."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        self.blocks = None  # the root output so far, while a render is being tracked
        self.spans = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_generation")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _generation(self, caller):
        rv = caller()
        if self.blocks is not None:
            start = len("".join(self.blocks))
            self.spans.append((start, start + len(rv)))
        return rv


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    # As jinja_globals.cpp: SOURCE_DATE_EPOCH (whole seconds) stands for now when set.
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit() and len(epoch) < 16:
        return datetime.fromtimestamp(int(epoch)).strftime(fmt)
    return datetime.now().strftime(fmt)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def byte_offset(text, index):
    return len(text[:index].encode("utf-8"))


def render(env, tracker, compiled, case):
    template = compiled.get(case["template"])
    if template is None:
        template = env.from_string(case["template"])
        compiled[case["template"]] = template
    blocks, spans = [], []
    tracker.blocks, tracker.spans = blocks, spans
    try:
        for block in template.generate(**case["context"]):
            blocks.append(block)
    finally:
        tracker.blocks = tracker.spans = None
    text = "".join(blocks)
    return {"text": text,
            "generation": [[byte_offset(text, b), byte_offset(text, e)] for b, e in spans if e > b]}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    env = make_env()
    tracker = next(e for e in env.extensions.values() if isinstance(e, GenerationTracker))
    compiled, results = {}, []
    for case in cases:
        try:
            results.append(render(env, tracker, compiled, case))
        except Exception as exc:  # any error: the C++ side must raise too
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()

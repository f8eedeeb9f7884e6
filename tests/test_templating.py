"""User templates: helpers, compile errors, bounds on time and size, and the sandbox holding."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bridge.sources.alertmanager import fingerprint as am_fingerprint
from bridge.templating import (
    Engine,
    Limits,
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    compile,
    render_fields,
    render_text,
    template_context,
)
from bridge.templating.helpers import _compiled
from tests.conftest import payload
from tests.support.clock import FakeClock

#: Every bound test must end in a clean error well within this (the CPU bound is 100 ms).
QUICK = 2.0


def render(source: str, data: Any = None, *, limits: Limits | None = None, **context: Any) -> str:
    """Compile and render ``source`` against ``data`` as the payload."""
    return render_text(compile(source, "t", limits=limits), template_context(data or {}, **context))


def limit_error(source: str, data: Any = None, *, limits: Limits | None = None) -> TemplateLimitError:
    """Render ``source`` expecting a TemplateLimitError, quickly; return it."""
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as info:
        render(source, data, limits=limits)
    assert time.monotonic() - started < QUICK
    return info.value


# --- helpers ---------------------------------------------------------------------------------


def test_tojson_keeps_text_as_is_and_renders_missing_values_as_null() -> None:
    """Plain JSON for text fields: no HTML escaping, non-ASCII kept, Undefined is null, dates ISO."""
    data = {"a": "<b>é & 'x'</b>", "n": [1, 2.5, None]}
    assert json.loads(render("{{ payload|tojson }}", data)) == data
    assert render("{{ payload.a|tojson }}", data) == json.dumps(data["a"], ensure_ascii=False)
    assert render("{{ payload.absent|tojson }}", data) == "null"
    assert render("{{ tojson(payload.n, indent=2) }}", data) == json.dumps(data["n"], indent=2)
    assert render("{{ payload|json_dumps }}", data) == render("{{ payload|tojson }}", data)
    assert render("{{ payload|tojson_pretty }}", data) == json.dumps(data, indent=2, ensure_ascii=False)
    assert render("{{ {'t': 0|parse_time}|tojson }}") == '{"t": "1970-01-01T00:00:00+00:00"}'


def test_json_loads_parses_text_and_reports_bad_json_with_its_position() -> None:
    """from_json / json_loads / parse_json turn a JSON string from the payload into values."""
    data = {"raw": '{"host": "db1", "tags": ["a", "b"]}'}
    assert render("{{ (payload.raw|json_loads).host }}", data) == "db1"
    assert render("{{ (payload.raw|from_json).tags|join(',') }}", data) == "a,b"
    assert render("{{ parse_json(payload.raw).tags[1] }}", data) == "b"
    assert render("{{ payload.absent|json_loads }}", data) == ""
    with pytest.raises(TemplateError, match=r"Unterminated string .*\(line 1, column 2\)"):
        render("{{ payload.raw|json_loads }}", {"raw": '{"'})


def test_regex_replace_uses_groups_count_and_ignorecase() -> None:
    """regex_replace substitutes with group references; count and ignorecase work."""
    data = {"s": "db1.prod, DB2.prod, db3.dev"}
    assert render(r"{{ payload.s|regex_replace('(\\w+)\\.prod', '\\1@prod') }}", data) == "db1@prod, DB2@prod, db3.dev"
    assert render("{{ payload.s|regex_replace('db', 'X', 1) }}", data) == "X1.prod, DB2.prod, db3.dev"
    assert render("{{ payload.s|regex_replace('db', 'X', ignorecase=true) }}", data) == "X1.prod, X2.prod, X3.dev"


def test_regex_match_is_anchored_and_regex_search_is_not() -> None:
    """regex_match tests the start of the text, regex_search anywhere; both return booleans."""
    data = {"s": "error: disk full"}
    assert render("{{ payload.s|regex_match('disk') }} {{ payload.s|regex_search('disk') }}", data) == "False True"
    assert render("{{ regex_match(payload.s, 'ERROR', ignorecase=true) }}", data) == "True"
    assert render("{{ payload.absent|regex_search('x') }}", data) == "False"


def test_invalid_regex_is_a_template_error_naming_the_pattern() -> None:
    """A broken pattern is reported, not a crash."""
    with pytest.raises(TemplateError, match="invalid regex"):
        render("{{ 'x'|regex_search('(unclosed') }}")


def test_regex_patterns_are_compiled_once() -> None:
    """Rendering the same pattern again hits the compiled-pattern cache."""
    template = compile("{{ payload.s|regex_search('compiled-once-[0-9]+') }}", "t")
    render_text(template, template_context({"s": "a"}))
    hits = _compiled.cache_info().hits
    for _ in range(3):
        render_text(template, template_context({"s": "b"}))
    assert _compiled.cache_info().hits >= hits + 3


def test_catastrophic_regex_times_out_cleanly() -> None:
    """Exponential backtracking ends at the render's CPU budget instead of hanging the process."""
    error = limit_error("{{ payload.s|regex_match('^(a|aa)+$') }}", {"s": "a" * 80 + "b"})
    assert "ran out of time" in str(error)


def test_regex_input_pattern_and_replacement_sizes_are_capped() -> None:
    """Text beyond max_regex_input, long patterns and growing replacements are refused."""
    limits = Limits(max_regex_input=100, max_regex_pattern=20, max_value=1000)
    assert "exceeds 100" in str(limit_error("{{ payload.s|regex_search('a') }}", {"s": "a" * 101}, limits=limits))
    with pytest.raises(TemplateError, match="at most 20"):
        render("{{ 'a'|regex_search('" + "a" * 21 + "') }}", limits=limits)
    with pytest.raises(TemplateError, match="replacement must be text of at most 20"):
        render("{{ 'a'|regex_replace('a', '" + "b" * 21 + "') }}", limits=limits)
    growing = "{{ payload.s|regex_replace('', 'xxxxxxxxxxxxxxxxxxx') }}"
    assert "result of regex_replace" in str(limit_error(growing, {"s": "a" * 90}, limits=limits))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-09-16T17:19:40Z", datetime(2025, 9, 16, 17, 19, 40, tzinfo=UTC)),
        ("2022-06-17T01:04:00.782137894Z", datetime(2022, 6, 17, 1, 4, 0, 782137, tzinfo=UTC)),
        ("2021-03-30T20:17:50+08:00", datetime(2021, 3, 30, 20, 17, 50, tzinfo=timezone(timedelta(hours=8)))),
        ("2021-03-30t12:17:50z", datetime(2021, 3, 30, 12, 17, 50, tzinfo=UTC)),
        ("2021-03-30 12:17:50", datetime(2021, 3, 30, 12, 17, 50, tzinfo=UTC)),
        (1758042679, datetime(2025, 9, 16, 17, 11, 19, tzinfo=UTC)),
        (1758042679.5, datetime(2025, 9, 16, 17, 11, 19, 500000, tzinfo=UTC)),
        ("1758042679", datetime(2025, 9, 16, 17, 11, 19, tzinfo=UTC)),
        (1758042679123, datetime(2025, 9, 16, 17, 11, 19, 123000, tzinfo=UTC)),
        ("1758042679123", datetime(2025, 9, 16, 17, 11, 19, 123000, tzinfo=UTC)),
        (1758042679123456, datetime(2025, 9, 16, 17, 11, 19, 123456, tzinfo=UTC)),
        (1758042679123456789, datetime(2025, 9, 16, 17, 11, 19, 123457, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_rfc3339_and_epoch_seconds_and_milliseconds(value: Any, expected: datetime) -> None:
    """RFC 3339 (any fraction, any offset), naive ISO as UTC, epoch s/ms/µs/ns as number or text."""
    assert render("{{ (payload.v|parse_time).isoformat() }}", {"v": value}) == expected.isoformat()


def test_time_helpers_format_zones_epochs_and_missing_values() -> None:
    """format_time defaults to ISO 8601, takes a zone; to_epoch gives seconds; missing stays empty."""
    data = {"t": "2025-09-16T17:19:40Z"}
    assert render("{{ payload.t|format_time }}", data) == "2025-09-16T17:19:40+00:00"
    assert render("{{ payload.t|format_time('%H:%M %Z', 'Asia/Shanghai') }}", data) == "01:19 CST"
    assert render("{{ payload.t|to_epoch }}", data) == str(
        int(datetime(2025, 9, 16, 17, 19, 40, tzinfo=UTC).timestamp())
    )
    assert render("{{ payload.t|iso8601_to_time|datetimeformat }}", data) == "17:19 / 16-09-2025"
    assert render("[{{ payload.absent|parse_time|format_time }}]", data) == "[]"
    with pytest.raises(TemplateError, match="unknown time zone"):
        render("{{ payload.t|format_time(tz='Mars/Olympus') }}", data)
    with pytest.raises(TemplateError, match="not an RFC 3339"):
        render("{{ 'yesterday'|parse_time }}")


def test_now_uses_the_engines_clock() -> None:
    """now() is the injected clock's time, timezone-aware UTC."""
    engine = Engine(clock=FakeClock(1_758_042_679.0))
    assert engine.compile("{{ now().isoformat() }}", "t").render({}) == "2025-09-16T17:11:19+00:00"
    assert engine.compile("{{ (now() - ('2025-09-16T17:10:19Z'|parse_time)).seconds }}", "t").render({}) == "60"


def test_hash_helpers_match_independent_computations() -> None:
    """sha256/md5 of text are the plain digests; mappings hash canonically whatever their key order."""
    data = {"s": "héllo", "a": {"x": "1", "y": "2"}, "b": {"y": "2", "x": "1"}}
    assert render("{{ payload.s|sha256 }}", data) == hashlib.sha256("héllo".encode()).hexdigest()
    assert render("{{ md5(payload.s) }}", data) == hashlib.md5("héllo".encode()).hexdigest()
    assert render("{{ payload.a|sha256 }}", data) == render("{{ payload.b|sha256 }}", data)
    assert render("{{ payload.a|sha256 }}", data) != render("{{ {'x': '1'}|sha256 }}", data)


def test_fingerprint_helper_is_alertmanagers_fingerprint() -> None:
    """fingerprint(labels) equals what a real Alertmanager sent for those labels."""
    body = payload("alertmanager-0.25-firing.json")
    rendered = render("{% for a in payload.alerts %}{{ a.labels|fingerprint }} {% endfor %}", body)
    assert rendered.split() == [alert["fingerprint"] for alert in body["alerts"]]
    assert render("{{ fingerprint({}) }}") == am_fingerprint({})
    with pytest.raises(TemplateError, match="mapping"):
        render("{{ 'text'|fingerprint }}")


def test_base64_helpers_round_trip_and_refuse_garbage() -> None:
    """b64encode is UTF-8 base64; b64decode reverses it and reports invalid input."""
    assert render("{{ 'héllo'|b64encode }}") == base64.b64encode("héllo".encode()).decode()
    assert render("{{ 'héllo'|b64encode|b64decode }}") == "héllo"
    with pytest.raises(TemplateError, match="base64"):
        render("{{ 'abc'|b64decode }}")


# --- compiling -------------------------------------------------------------------------------


def test_syntax_error_names_the_template_and_line() -> None:
    """A compile error says which template and which line, for check-config output."""
    with pytest.raises(TemplateError) as info:
        compile("line one\nline two {{ payload.x }}\nline three {% if %}\n", "grafana.title")
    assert (info.value.name, info.value.line) == ("grafana.title", 3)
    assert str(info.value).startswith("grafana.title:3: ")


def test_unknown_filter_is_reported_at_compile_time_with_its_line() -> None:
    """Jinja only notices a misspelt filter when rendering; the bridge says so when compiling."""
    with pytest.raises(TemplateError) as info:
        compile("ok\n{{ payload.x|uppr }}", "desc")
    assert (info.value.name, info.value.line) == ("desc", 2)
    assert "no filter named 'uppr'" in str(info.value)


@pytest.mark.parametrize(
    "source", ["{% include 'x' %}", "{% import 'x' as y %}", "{% from 'x' import y %}", "{% extends 'x' %}"]
)
def test_templates_cannot_load_other_templates(source: str) -> None:
    """There is no filesystem: include, import and extends are refused at compile time."""
    with pytest.raises(TemplateError, match="not supported"):
        compile(source, "t")


def test_source_size_is_capped() -> None:
    """A template larger than max_source is refused before parsing."""
    with pytest.raises(TemplateLimitError):
        compile("x" * 101, "t", limits=Limits(max_source=100))


def test_runtime_error_names_the_template_and_line() -> None:
    """A failure while rendering names the template and the line it happened on."""
    template = compile("a\nb\n{{ payload.n / 0 }}", "desc")
    with pytest.raises(TemplateError) as info:
        render_text(template, template_context({"n": 1}))
    assert (info.value.name, info.value.line) == ("desc", 3)
    assert "ZeroDivisionError" in str(info.value)


# --- rendering -------------------------------------------------------------------------------


def test_payload_text_is_data_never_a_template() -> None:
    """Template syntax inside the payload is output literally, not evaluated."""
    data = {"s": "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ payload }}"}
    assert render("{{ payload.s }}", data) == data["s"]
    assert render("{{ payload.s|upper|lower }}", data) == data["s"].lower()
    assert "49" not in render("{{ payload|tojson }}", data)


def test_missing_fields_render_empty_at_any_depth() -> None:
    """ChainableUndefined: a missing field, a field of it, or None render as empty text."""
    data = {"n": None, "labels": {"a": "1"}}
    assert render("[{{ payload.a.b.c }}][{{ payload.labels.zz }}][{{ payload.n }}][{{ payload['x']['y'] }}]", data) == (
        "[][][][]"
    )
    assert render("{{ 'yes' if payload.a.b else 'no' }} {{ payload.a.b|default('dflt') }}", data) == "no dflt"
    with pytest.raises(TemplateError):
        render("{{ payload.a.b + 1 }}", data)


def test_context_exposes_payload_headers_query_and_alert_without_credentials() -> None:
    """Header names are lower-case; Authorization and Cookie never reach a template."""
    context = template_context(
        {"k": "v"},
        headers={"X-Team": "db", "Authorization": "Bearer SECRET", "Cookie": "s=SECRET"},
        query={"route": "night"},
        alert={"status": "firing"},
    )
    template = compile(
        "{{ payload.k }} {{ headers['x-team'] }} {{ query.route }} {{ alert.status }} {{ headers }}", "t"
    )
    rendered = render_text(template, context)
    assert rendered.startswith("v db night firing ")
    assert "SECRET" not in rendered
    assert "alert" not in template_context({})


def test_render_fields_renders_each_field_and_names_the_failing_one() -> None:
    """A mapping of field templates renders to a mapping of texts; a failure names its template."""
    fields = {"title": compile("{{ payload.name }}", "am.title"), "key": compile("{{ payload|sha256 }}", "am.key")}
    out = render_fields(fields, template_context({"name": "Disk"}))
    assert out == {"title": "Disk", "key": hashlib.sha256(b'{"name":"Disk"}').hexdigest()}
    with pytest.raises(TemplateError) as info:
        render_fields({"ok": fields["title"], "bad": compile("{{ 1 // 0 }}", "am.bad")}, template_context({}))
    assert info.value.name == "am.bad"


def test_everyday_jinja_still_works_under_the_guards() -> None:
    """Loops with loop.*, break, macros with caller, set blocks, filters, % and format all behave."""
    body = payload("grafana-mixed.json")
    source = (
        "{% macro box(x) %}[{{ x }}{{ caller() }}]{% endmacro %}"
        "{% for a in payload.alerts %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ loop.index }}/{{ loop.length }}:{{ a.status }}{{ ',' if not loop.last }}{% endfor %} "
        "{% call box('a') %}c{% endcall %} "
        "{% set t %}{{ payload.receiver }}{% endset %}{{ t|upper }} "
        "{{ payload.alerts|map(attribute='labels.alertname')|unique|sort|join('+') }} "
        "{{ '%s-%03d'|format('n', 7) }} {{ '%s!' % payload.status }} {{ '{}={x}'.format('k', x=1) }} "
        "{{ [1, 2, 3]|sum }} {{ 'a,b'.split(',')|length }} {{ 'ab' ~ 1 }}"
    )
    assert render(source, body) == (
        "1/3:resolved,2/3:resolved, [ac] WEBHOOK TEST Second webhook test+Test alert n-007 firing! k=1 6 2 ab1"
    )


# --- bounds ----------------------------------------------------------------------------------


def test_output_is_capped() -> None:
    """A render whose output passes max_output stops with a limit error."""
    limits = Limits(max_output=1000)
    assert len(render("{% for i in range(100) %}0123456789{% endfor %}", limits=limits)) == 1000
    assert "output exceeds 1000" in str(limit_error("{% for i in range(101) %}0123456789{% endfor %}", limits=limits))


def test_a_cut_render_stops_at_its_length_instead_of_failing() -> None:
    """cut_at: the text up to that length, and no more work: a loop that would run past the CPU bound ends early."""
    template = compile("{% for i in range(10000) %}{% for j in range(10000) %}0123456789{% endfor %}{% endfor %}", "t")
    started = time.process_time()
    assert template.render(template_context({}), cut_at=100_005) == "0123456789" * 10_000 + "01234"
    assert time.process_time() - started < 0.1  # a full render would stop at the 100 ms CPU bound instead
    assert template.render(template_context({}), cut_at=3) == "012"


def test_an_expression_is_evaluated_to_its_value_without_a_text_round_trip() -> None:
    """compile_expression/evaluate: the very objects of the context, no output limit, template errors as usual."""
    from bridge.templating import compile_expression

    items = [{"n": i, "text": "x" * 1000} for i in range(200)]  # 200 KB as JSON: over the 64 KiB output limit
    value = compile_expression("payload.rows", "alerts").evaluate(template_context({"rows": items}))
    assert value is items
    built = compile_expression("[payload] if payload.ok else []", "alerts").evaluate(template_context({"ok": 1}))
    assert built == [{"ok": 1}]
    with pytest.raises(TemplateLimitError):
        compile_expression("'x' * 10**9", "alerts").evaluate(template_context({}))
    with pytest.raises(TemplateError, match="alerts"):
        compile_expression("payload.a.b + 1", "alerts").evaluate(template_context({}))


def test_huge_range_is_refused() -> None:
    """range(10**9) fails at once instead of looping."""
    assert "range()" in str(limit_error("{% for i in range(10**9) %}{% endfor %}"))
    assert "range()" in str(limit_error("{{ range(2**70)|length }}"))


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "{% for a in payload.rows %}{% for b in payload.rows %}{% for c in payload.rows %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% for a in payload.rows %}{% for b in payload.rows %}{{ '' }}{% endfor %}{% endfor %}",
        # No lookup, call or output inside the loops: only the loop guards can stop it.
        "{% set r = payload.rows %}{% for a in r %}{% for b in r %}{% for c in r %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% for i in range(10000) %}{% for j in range(10000) %}{% set x = payload.rows[j] %}{% endfor %}{% endfor %}",
    ],
)
def test_nested_loops_stop_at_the_cpu_budget(source: str) -> None:
    """Loops over ranges or payload lists, with or without a body, end at the CPU bound."""
    error = limit_error(source, {"rows": list(range(10_000))})
    assert "ms of CPU time" in str(error)


def test_cpu_budget_is_configurable() -> None:
    """A smaller max_cpu_seconds ends a runaway render sooner."""
    source = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    started = time.thread_time()
    error = limit_error(source, limits=Limits(max_cpu_seconds=0.02))
    assert "20 ms" in str(error)
    assert time.thread_time() - started < 0.5


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 10**9 * 'x' }}",
        "{{ 2 ** (10**9) }}",
        "{% set ns = namespace(n=2) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set s = 'x' * 600000 %}{% set t %}{{ s }}{{ s }}{% endset %}",
        "{% set s = 'x' * 600000 %}{% macro m() %}{{ s }}{{ s }}{% endmacro %}{{ m()|length }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ 'x'.zfill(10**9) }}",
        "{{ ('x' * 1000).replace('', 'y' * 1000) }}",
        "{{ ('x' * 1000)|replace('', 'y' * 1000) }}",
        "{{ ('a\n' * 1000)|indent(10000) }}",
        "{{ ('\t' * 1000).expandtabs(10000) }}",
        "{{ '%999999999s' % 'x' }}",
        "{{ '%s%s%s%s' % (('x' * 400000),) * 4 }}",
        "{{ '%999999999d'|format(1) }}",
        "{{ '{:>999999999}'.format('x') }}",
        "{{ '{:{}}'.format('x', 10**9) }}",
        "{{ ('{0}' * 1000).format('x' * 10000) }}",
        "{{ ([('x' * 10000)] * 1000)|join }}",
        "{{ ','.join([('x' * 10000)] * 1000) }}",
        "{{ ([('x' * 10000)] * 1000)|tojson }}",
        "{{ [('x' * 10000)] * 1000 }}",
        "{{ ([('x' * 10000)] * 1000)|string }}",
        "{{ ('x' * 10000) ~ ([('x' * 10000)] * 1000) }}",
        "{{ [1]|batch(10**9, 'x')|list }}",
        "{{ [1]|slice(10**9)|list }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(0) }}",
        "{% for x in [[]] recursive %}{{ loop([[[]]]) }}{% endfor %}",
    ],
)
def test_amplifying_templates_end_in_a_clean_limit_error(source: str) -> None:
    """Repetition, doubling, padding, format widths, joins, recursion: each is refused early."""
    limit_error(source)


def test_quadratic_sum_of_lists_is_refused() -> None:
    """sum only adds numbers: summing lists would copy quadratically."""
    with pytest.raises(TemplateError, match="numbers only"):
        render("{{ [[0]] * 10000 | sum(start=[]) }}")


def test_process_survives_every_limit_and_renders_normally_afterwards() -> None:
    """After runaway templates, a normal render still works and is fast."""
    for source in ("{{ 'x' * 10**9 }}", "{% for i in range(10**9) %}{% endfor %}"):
        with pytest.raises(TemplateLimitError):
            render(source)
    started = time.monotonic()
    assert render("{{ payload.a }}", {"a": "ok"}) == "ok"
    assert time.monotonic() - started < 0.5


def test_budgets_are_per_render_and_per_thread() -> None:
    """A runaway render in one thread does not use up the budget of renders in others."""
    slow = compile("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "slow")
    fast = compile("{% for i in range(1000) %}{{ i % 10 }}{% endfor %}", "fast")

    def run(template: Any) -> str:
        try:
            return render_text(template, {})
        except TemplateLimitError:
            return "limited"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, [slow, fast] * 8))
    assert results[0::2] == ["limited"] * 8
    assert all(len(result) == 1000 for result in results[1::2])


# --- the sandbox -----------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__()[0].__init__.__globals__['sys'].modules['os'].system('id') }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ payload.__class__.__init__.__globals__ }}",
    "{{ payload.__init__.__globals__['__builtins__'] }}",
    "{{ range.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ namespace.__init__.__globals__.__builtins__.__import__('os') }}",
    "{{ dict.mro() }}",
    "{{ dict.__subclasses__() }}",
    "{{ self }}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.environment }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ lipsum.__globals__.os }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ config.items() }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('id').read() }}",
    "{{ os.popen('id').read() }}",
    "{{ __builtins__ }}",
    "{{ sha256.__globals__ }}",
    "{{ now.__self__ }}",
    "{{ now.__func__.__globals__ }}",
    "{{ tojson.__self__.clock }}",
    "{{ '{0.__class__}'.format(payload) }}",
    "{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}",
    "{{ '{0.__init__.__globals__}'.format(range) }}",
    "{{ '{x.__class__}'.format_map({'x': payload}) }}",
    "{% set f = '{0.__class__.__mro__}'.format %}{{ f('') }}",
    "{{ (''|attr('format'))('{0.__class__.__mro__}', '') }}",
    "{{ ('{0.__class__}'|attr('format'))(payload) }}",
    "{{ '%s'|format(payload.__class__) }}",
    "{{ '%s' % payload.__class__ }}",
    "{{ payload|attr('__class__') }}",
    "{{ (payload|attr('__class__')|attr('__mro__'))[1] }}",
    "{{ payload|attr('__class__')|attr('__subclasses__') }}",
    "{{ payload.alerts.append(1) }}{{ payload.alerts }}",
    "{{ payload.update({'x': 1}) }}",
    "{{ payload.alerts.clear() }}",
    "{% set x = payload.pop('alerts') %}",
    "{{ payload.items.__self__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ 1.0.hex.__self__.__class__ }}",
    "{{ payload.keys.__func__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_known_sandbox_escapes_render_harmlessly_or_fail_cleanly(source: str) -> None:
    """Each known escape payload yields no Python internals and no side effects, or a clean error."""
    data = {"alerts": [1], "secret": "SECRET-VALUE"}
    try:
        rendered = render(source, data)
    except TemplateError:
        pass  # a clean, reportable refusal (TemplateSecurityError or a plain template error)
    else:
        for marker in ("<class", "<module", "<function", "<built-in", "<bound", "uid=", "environ", "Helpers"):
            assert marker not in rendered
    assert data == {"alerts": [1], "secret": "SECRET-VALUE"}  # the payload was not modified


def test_calling_through_an_unsafe_attribute_is_a_security_error() -> None:
    """The classic __subclasses__() chain is refused as a security error, not a crash."""
    with pytest.raises(TemplateSecurityError, match="__class__"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_a_percent_format_from_the_payload_is_sized_in_linear_time() -> None:
    """A format string from the sender with many unclosed "%(" once took quadratic time to size up.

    Checked in a child bounded by a generous timeout (the old pattern needed about 20 minutes for
    this input); no timing is asserted.
    """
    import subprocess
    import sys

    script = (
        "from bridge.templating import Limits\n"
        "from bridge.templating.sandbox import check_percent\n"
        "fmt = ('%(' + 'a') * 300_000 + ')'\n"
        "check_percent(fmt, {}, Limits(max_value=10**9))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_percent_key_with_parentheses_is_sized_as_the_widest_conversion() -> None:
    """%(a(b))99999s cannot be parsed linearly: it is then counted conservatively, and refused."""
    with pytest.raises(TemplateError, match="% format result"):
        render("{{ payload.fmt % payload.vals }}", {"fmt": "%(a(b))999999s" * 3, "vals": {"a(b)": "x"}})
    assert render("{{ payload.fmt % payload.vals }}", {"fmt": "%(a(b))s!", "vals": {"a(b)": "x"}}) == "x!"

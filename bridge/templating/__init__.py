"""User templates over sender payloads: Jinja2 in a bounded sandbox, Grafana OnCall style.

A template sees the request body as ``payload``, its headers (lower-case names, without
``Authorization`` and cookies) as ``headers`` and its query parameters as ``query``; when a
template runs once per item of a payload's ``alerts`` list, the item is ``alert``
(:func:`template_context`). Compile once (:func:`compile`), render per request
(:func:`render_text`, :func:`render_fields`).

Choices:

* **Sandbox**: Jinja's ``ImmutableSandboxedEnvironment`` (no ``_``-attributes, no ``mro``,
  no mutating methods, sandboxed ``str.format``); no loader, so no files, ``include`` or
  ``import``; Jinja's ``lipsum``, ``cycler`` and ``joiner`` removed.
* **Payload text is data**: values are only ever output, never compiled; no helper renders
  text as a template, so ``{{ 7*7 }}`` inside a payload stays literally that.
* **Undefined policy**: ``ChainableUndefined``: a missing field at any depth
  (``payload.a.b.c``) renders as empty text and is falsy; using it in arithmetic or calling
  it still fails. ``None`` renders as empty text too.
* **Bounds** (:class:`Limits`): source and output size, CPU time per render, size of every
  value built, ``range()`` length, call nesting, regex input. A field that is truncated anyway
  renders with ``cut_at`` (its text is cut, not refused); an expression (``alerts``) is
  evaluated to its value, without a text round trip (:meth:`Template.evaluate`). The CPU
  bound of a whole request (many renders, and single C calls such as a sort, which no tick
  interrupts) is the worker's: see :mod:`bridge.workers`. How they are enforced, and
  what they do not cover, is in :mod:`bridge.templating.sandbox`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from types import CodeType, TracebackType
from typing import Any

from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaError

from bridge.templating.budget import Budget, Limits, TemplateError, TemplateLimitError, TemplateSecurityError, running
from bridge.templating.helpers import Helpers
from bridge.templating.sandbox import GuardedEnvironment, guard_tree

__all__ = [
    "Engine",
    "Limits",
    "Template",
    "TemplateError",
    "TemplateLimitError",
    "TemplateSecurityError",
    "compile",
    "compile_expression",
    "render_fields",
    "render_text",
    "template_context",
]

#: The variable an expression template assigns its value to (see :meth:`Engine.compile_expression`).
EXPRESSION_VALUE = "bridge_expression_value"
#: Request headers a template never sees: credentials belong to the bridge, not to alert text.
HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_NO_ALERT = object()


class Template:
    """A compiled template; immutable and safe to render from many requests at once.

    Equal to another template of the same name, source and limits. Pickled as that
    (name, source, limits), so unpickling compiles it again with the default engine.
    """

    __slots__ = ("_jinja", "_limits", "filename", "name", "source")

    def __init__(self, name: str, jinja: JinjaTemplate, limits: Limits, filename: str, source: str = "") -> None:
        self.name = name
        self.filename = filename
        self.source = source
        self._jinja = jinja
        self._limits = limits

    def __repr__(self) -> str:
        return f"Template({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return (self.name, self.source, self._limits) == (other.name, other.source, other._limits)

    def __hash__(self) -> int:
        return hash((self.name, self.source, self._limits))

    def __reduce__(self) -> tuple[Any, ...]:
        return _recompile, (self.source, self.name, self._limits)

    def render(self, context: Mapping[str, Any], *, cut_at: int | None = None) -> str:
        """Render with a fresh budget; raise :class:`TemplateError` (or a subclass) on any failure.

        Output beyond the limits' ``max_output`` is an error, unless ``cut_at`` is given: then the
        render stops once ``cut_at`` characters are out and returns them, whatever ``max_output``
        says (for a field that is truncated anyway, rendering more only costs time).
        """
        limits = self._limits
        parts: list[str] = []
        size = 0
        with running(Budget(limits)), self._reported():
            stream = self._jinja.generate(dict(context))
            assert isinstance(stream, Generator)
            try:
                for chunk in stream:
                    size += len(chunk)
                    if cut_at is not None and size >= cut_at:
                        parts.append(chunk[: len(chunk) - (size - cut_at)])
                        break
                    if cut_at is None and size > limits.max_output:
                        raise TemplateLimitError(f"output exceeds {limits.max_output} characters")
                    parts.append(chunk)
            finally:
                stream.close()
        return "".join(parts)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The value of an expression compiled by :meth:`Engine.compile_expression` (not its text).

        The value is what the expression built or picked out of the context (``payload.items`` is
        the very list the body decoded to): no text round trip, so no output limit applies; what
        the expression builds is bounded like any other template value.
        """
        with running(Budget(self._limits)), self._reported():
            jinja_context = self._jinja.new_context(dict(context))
            for _ in self._jinja.root_render_func(jinja_context):
                pass
            return jinja_context.vars.get(EXPRESSION_VALUE)

    @contextlib.contextmanager
    def _reported(self) -> Iterator[None]:
        """Turn whatever a render raises into a :class:`TemplateError` naming this template and the line."""
        try:
            yield
        except TemplateError as exc:
            raise exc.located(self.name, self._line(exc.__traceback__)) from None
        except SecurityError as exc:
            raise TemplateSecurityError(str(exc), name=self.name, line=self._line(exc.__traceback__)) from None
        except (RecursionError, MemoryError) as exc:
            raise TemplateLimitError(f"render failed: {type(exc).__name__}", name=self.name) from None
        except JinjaError as exc:
            line = self._line(exc.__traceback__)
            raise TemplateError(exc.message or str(exc), name=self.name, line=line) from None
        except Exception as exc:
            line = self._line(exc.__traceback__)
            raise TemplateError(f"{type(exc).__name__}: {exc}", name=self.name, line=line) from None

    def _line(self, trace: TracebackType | None) -> int | None:
        """The template line of the innermost frame of this template (Jinja rewrites them)."""
        line = None
        while trace is not None:
            if trace.tb_frame.f_code.co_filename == self.filename:
                line = trace.tb_lineno
            trace = trace.tb_next
        return line


class Engine:
    """Compiles templates against one set of :class:`Limits`, helpers and clock."""

    def __init__(self, limits: Limits | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or Limits()
        helpers = Helpers(self.limits, clock)
        self._env = GuardedEnvironment(self.limits, helpers.filters(), helpers.globals())

    def compile(self, source: str, name: str) -> Template:
        """Compile ``source``; a syntax error raises :class:`TemplateError` naming ``name`` and the line."""
        if not isinstance(source, str):
            raise TemplateError("template source must be text", name=name)
        if len(source) > self.limits.max_source:
            message = f"template of {len(source)} characters exceeds {self.limits.max_source}"
            raise TemplateLimitError(message, name=name)
        filename = f"<template {name}>"
        try:
            tree = guard_tree(self._env.parse(source, name=name, filename=filename))
            self._check_names(tree)
            tree.set_environment(self._env)
            code: CodeType = self._env.compile(tree, name=name, filename=filename)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or "syntax error", name=name, line=exc.lineno) from None
        except TemplateError as exc:
            raise exc.located(name, exc.line) from None
        except RecursionError:
            raise TemplateError("template nests too deeply", name=name) from None
        jinja = self._env.template_class.from_code(self._env, code, self._env.make_globals(None))
        return Template(name, jinja, self.limits, filename, source)

    def compile_expression(self, expression: str, name: str) -> Template:
        """Compile a Jinja expression (no braces) for :meth:`Template.evaluate`."""
        if not isinstance(expression, str):
            raise TemplateError("an expression must be text", name=name)
        return self.compile("{% set " + EXPRESSION_VALUE + " = (" + expression + ") %}", name)

    def _check_names(self, tree: nodes.Template) -> None:
        # Jinja 3 reports an unknown filter or test only when rendering; say it at compile time.
        for node in tree.find_all((nodes.Filter, nodes.Test)):
            known = self._env.filters if isinstance(node, nodes.Filter) else self._env.tests
            if node.name not in known:
                kind = "filter" if isinstance(node, nodes.Filter) else "test"
                raise TemplateError(f"no {kind} named {node.name!r}", line=node.lineno)


@functools.lru_cache(maxsize=8)
def _engine(limits: Limits) -> Engine:
    return Engine(limits)


def compile(source: str, name: str, *, limits: Limits | None = None) -> Template:
    """Compile ``source`` as template ``name`` with the default engine for ``limits``."""
    return _engine(limits or Limits()).compile(source, name)


def compile_expression(expression: str, name: str, *, limits: Limits | None = None) -> Template:
    """Compile ``expression`` (no braces) for :meth:`Template.evaluate`, with the default engine."""
    return _engine(limits or Limits()).compile_expression(expression, name)


def _recompile(source: str, name: str, limits: Limits) -> Template:
    return compile(source, name, limits=limits)


def render_text(template: Template, context: Mapping[str, Any], *, cut_at: int | None = None) -> str:
    """Render ``template`` against ``context`` (see :func:`template_context`, and ``cut_at`` in Template.render)."""
    return template.render(context, cut_at=cut_at)


def render_fields(templates: Mapping[str, Template], context: Mapping[str, Any]) -> dict[str, str]:
    """Render each field's template against one context; the first failure raises, naming its template."""
    return {field: template.render(context) for field, template in templates.items()}


def template_context(
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    alert: Any = _NO_ALERT,
) -> dict[str, Any]:
    """The variables a template sees: ``payload``, ``headers``, ``query`` and, per item, ``alert``."""
    visible = {key.lower(): value for key, value in (headers or {}).items() if key.lower() not in HIDDEN_HEADERS}
    context: dict[str, Any] = {"payload": payload, "headers": visible, "query": dict(query or {})}
    if alert is not _NO_ALERT:
        context["alert"] = alert
    return context

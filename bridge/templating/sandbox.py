"""The Jinja2 environment user templates run in: Jinja's immutable sandbox, plus bounds.

Jinja's sandbox stops attribute escapes (``__class__``, ``__globals__``, ``mro`` …), unsafe
calls, mutation of lists and dicts, and ``str.format`` tricks. It does not bound work, so
every place where a template can spend time or memory is routed through the render's
:class:`~bridge.templating.budget.Budget`:

* **Loops**: :class:`_Guard` rewrites each ``{% for %}`` to iterate through
  :meth:`GuardedEnvironment.bridge_iterate`, which ticks per item; ``range()`` is capped.
* **Calls** (macros, methods, globals) go through :meth:`GuardedEnvironment.call`: a tick, a
  nesting level (so macro recursion stops at ``max_depth``), and the result's size.
* **Filters** are wrapped (:func:`guard_filter`): a tick, checks of the arguments that
  multiply output (``center`` width, ``batch`` size …), and the result's size.
* **Operators** ``* ** + %`` are intercepted and checked before they run (``'x' * 10**9``,
  ``2 ** 10**9``, ``'%999999999s'``); ``~`` is rewritten to :meth:`bridge_concat`.
* **Output**: every ``{{ … }}`` passes :meth:`_finalize` (a tick; a container is weighed
  before it is turned into text), and every captured block (``{% set %}…``, macro bodies)
  is joined by :meth:`concat`, which checks the size first.

Each tick checks the CPU clock every few ticks (see ``budget``). What is not covered: a
single C-level operation is not interrupted, so the bound is only as good as the size
checks in front of the expensive ones, and the CPU deadline may be overshot by one such
operation (bounded by ``max_value``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from string import Formatter
from typing import Any

from jinja2 import ChainableUndefined, Environment, nodes, pass_context, pass_environment
from jinja2.filters import do_sum
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from bridge.templating import budget as _budget
from bridge.templating.budget import Limits, TemplateError, TemplateLimitError, check_size, created, tick, weight

#: Bits an integer built by ``*`` or ``**`` may have (bigger ones only burn CPU).
_MAX_INT_BITS = 4096
#: One % conversion. A mapping key holds no parenthesis here, so a scan for it stops at the next
#: one: linear in the format (``[^)]*`` rescanned the rest of the text from every "%(").
_PERCENT_SPEC = re.compile(r"%(\([^()]*\))?[#0 +-]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"[0-9]+")
#: Filters that turn their input into text first, so a big container is refused up front.
_STRINGIFYING = frozenset(
    {
        *("capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "pprint"),
        *("replace", "safe", "string", "striptags", "title", "trim", "truncate", "upper", "urlencode"),
        *("urlize", "wordcount", "wordwrap", "xmlattr"),
    }
)


class _Guard(NodeTransformer):
    """Route loops and ``~`` of a parsed template through the environment's guards."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call("bridge_iterate", [node.iter], node.lineno)  # type: ignore[list-item]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call("bridge_concat", node.nodes, node.lineno)


def _call(method: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(method, lineno=lineno), args, [], None, None, lineno=lineno)


def guard_tree(tree: nodes.Template) -> nodes.Template:
    """Refuse template loading (there is no filesystem) and rewrite loops and ``~``."""
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateError(f"{type(node).__name__.lower()} is not supported: templates cannot load others")
    guarded = _Guard().visit(tree)
    assert isinstance(guarded, nodes.Template)
    return guarded


def _int_arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _replace_size(text: str, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(old, str) and isinstance(new, str)):
        return len(text)
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


def _spec_width(spec: str) -> int:
    numbers = _DIGITS.findall(spec)
    if any(len(number) > 9 for number in numbers):
        return 10**10
    return max((int(number) for number in numbers), default=0)


def check_percent(fmt: str, values: Any, limits: Limits) -> None:
    """Refuse ``fmt % values`` when its widths or repeated arguments would build too much.

    Linear in ``fmt``. A mapping key with parentheses inside (``%(a(b))s``) is not parsed: then
    every ``%`` counts as a conversion as wide as the widest number anywhere in ``fmt``.
    """
    found = _PERCENT_SPEC.findall(fmt)
    specs = [(width, precision) for _, width, precision in found]
    if any("*" in (width, precision) for width, precision in specs):
        raise TemplateLimitError("'*' widths in % formats are not allowed")
    widest = max((_spec_width(f"{width} {precision}") for width, precision in specs), default=0)
    if sum(1 for key, _, _ in found if key) < fmt.count("%("):  # a key the pattern could not read
        specs = [("", "")] * fmt.count("%")
        widest = _spec_width(fmt)
    items = values.values() if isinstance(values, Mapping) else values if isinstance(values, tuple) else (values,)
    heaviest = max((weight(item, limits.max_value) for item in items), default=0)
    check_size(len(fmt) + len(specs) * (widest + heaviest), limits, "a % format result")


def _str_method_size(text: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """The length a ``str`` method would return, for those whose output can outgrow the input."""
    if method in ("center", "ljust", "rjust", "zfill"):
        width = _int_arg(args, kwargs, 0, "width", 0)
        return max(len(text), width if isinstance(width, int) else 0)
    if method == "expandtabs":
        size = _int_arg(args, kwargs, 0, "tabsize", 8)
        return len(text) + text.count("\t") * (size if isinstance(size, int) else 8)
    if method == "replace":
        return _replace_size(text, _int_arg(args, kwargs, 0, "old", ""), _int_arg(args, kwargs, 1, "new", ""), -1)
    return 0


def _filter_args_size(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], limits: Limits) -> int:
    """The size a built-in filter would build from its arguments, for those that multiply."""
    if name in ("batch", "slice"):
        count = _int_arg(args, kwargs, 0, "linecount" if name == "batch" else "slices", 0)
        if isinstance(count, int) and count > limits.max_range:
            raise TemplateLimitError(f"{name} of {count} exceeds {limits.max_range}")
        return 0
    text = value if isinstance(value, str) else ""
    if name == "center":
        width = _int_arg(args, kwargs, 0, "width", 80)
        return width if isinstance(width, int) else 0
    if name == "indent":
        width = _int_arg(args, kwargs, 0, "width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        return len(text) + (text.count("\n") + 1) * pad
    if name == "replace":
        old, new, count = [*args, None, None, None][:3]
        return _replace_size(text, old, new, count)
    if name == "wordwrap":
        width = _int_arg(args, kwargs, 0, "width", 79)
        wrap = _int_arg(args, kwargs, 2, "wrapstring", "\n")
        per_line = len(wrap) if isinstance(wrap, str) else 1
        return len(text) + (len(text) // max(1, width if isinstance(width, int) else 1) + 1) * per_line
    if name == "join":
        separator = _int_arg(args, kwargs, 0, "d", "")
        count = len(value) if isinstance(value, list | tuple) else 0
        return weight(value, limits.max_value) + count * len(str(separator))
    return 0


def guard_filter(name: str, func: Callable[..., Any], limits: Limits) -> Callable[..., Any]:
    """Wrap filter ``func`` so each use ticks and is size-checked before and after it runs.

    The wrapper takes the context, which also stops Jinja from running it at compile time
    (constant folding), outside any budget; it passes on what ``func`` asks for.
    """
    wants = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        if name == "join" and not isinstance(value, str | list | tuple | Mapping | Undefined):
            value = list(value)  # a generator: materialise it once so it can be weighed
        if name in _STRINGIFYING and not isinstance(value, str):
            check_size(weight(value, limits.max_value), limits, f"input of filter {name}")
        check_size(_filter_args_size(name, value, args, kwargs, limits), limits, f"result of filter {name}")
        if wants == "context":
            result = func(context, value, *args, **kwargs)
        elif wants == "eval_context":
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif wants == "environment":
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        return created(result)

    return pass_context(functools.update_wrapper(guarded, func, updated=()))


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every loop, call, filter, operator and output bounded.

    No loader (templates cannot read files or include each other), no autoescaping (the
    output is plain text for Flashduty, not HTML), ``ChainableUndefined`` (a missing field
    at any depth renders as empty text), ``None`` renders as empty text.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: Limits, filters: Mapping[str, Callable[..., Any]], globals: Mapping[str, Any]) -> None:
        super().__init__(
            autoescape=False,
            undefined=ChainableUndefined,
            finalize=self._finalize,
            extensions=["jinja2.ext.loopcontrols"],
        )
        self.limits = limits
        # Jinja's lipsum/cycler/joiner are dropped: no use in alert text, more surface.
        self.globals = {"range": self._range, "dict": dict, "namespace": Namespace, **globals}
        all_filters = {**self.filters, "format": self._format, "sum": self._sum, **filters}
        self.filters = {key: guard_filter(key, func, limits) for key, func in all_filters.items()}

    # -- hooks Jinja's sandbox calls ------------------------------------------------------

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.current()
        if budget is not None:
            budget.tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(obj, "__name__", "")
            check_size(_str_method_size(owner, method, args, kwargs), self.limits, f"result of str.{method}")
            if method == "join" and args:
                items = list(args[0])  # weigh the parts before the join builds the string
                check_size(weight(items, self.limits.max_value) + len(items) * len(owner), self.limits, "a join")
                args = (items, *args[1:])
        if budget is None:
            return super().call(context, obj, *args, **kwargs)
        with budget.nested():
            result = super().call(context, obj, *args, **kwargs)
        return budget.created(result)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and right > 0 and abs(left) > 1 and abs(left).bit_length() * right > _MAX_INT_BITS:
            raise TemplateLimitError(f"integer power over {_MAX_INT_BITS} bits")
        if operator == "*":
            if ints and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise TemplateLimitError(f"integer product over {_MAX_INT_BITS} bits")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    check_size(len(seq) * max(times, 0), self.limits, "a repeated sequence")
        if operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            check_size(len(left) + len(right), self.limits, "a sum")
        if operator == "%" and isinstance(left, str):
            check_percent(left, right, self.limits)
        return created(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            tick()
            if is_map:
                mapping = args[0] if args else {}
                self._check_brace_format(fmt, (), mapping if isinstance(mapping, Mapping) else {})
            else:
                self._check_brace_format(fmt, args, kwargs)
            return str(created(wrapper(*args, **kwargs)))

        return functools.update_wrapper(guarded, wrapper)

    def concat(self, pieces: Iterable[str]) -> str:
        """Join a captured block (``{% set %}`` body, macro output) after checking its size."""
        pieces = list(pieces)
        check_size(sum(len(piece) for piece in pieces), self.limits, "a captured block")
        return str(created("".join(pieces)))

    # -- what the rewritten template calls ------------------------------------------------

    def bridge_iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Every ``{% for %}`` iterates through here: one tick per item."""
        for item in iterable:
            tick()
            yield item

    def bridge_concat(self, *parts: Any) -> str:
        """The ``~`` operator, with each part weighed before it becomes text."""
        total = 0
        texts = []
        for part in parts:
            if not isinstance(part, str):
                check_size(weight(part, self.limits.max_value), self.limits, "a ~ operand")
                part = str(part)
            total += len(part)
            check_size(total, self.limits, "a ~ result")
            texts.append(part)
        return str(created("".join(texts)))

    # -- replaced globals and filters ---------------------------------------------------

    def _range(self, *args: int) -> range:
        span = range(*args)
        try:
            size = len(span)
        except OverflowError:
            size = self.limits.max_range + 1
        if size > self.limits.max_range:
            raise TemplateLimitError(f"range() of more than {self.limits.max_range} items")
        return span

    def _format(self, value: Any, *args: Any, **kwargs: Any) -> str:
        if args and kwargs:
            raise TemplateError("format takes positional or keyword arguments, not both")
        values: Any = kwargs or args
        check_percent(str(value), values, self.limits)
        text: str = str(value) % values
        return text

    @staticmethod
    @pass_environment
    def _sum(environment: Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
        # Python's sum() of lists is quadratic (each step copies); templates sum numbers.
        if not isinstance(start, int | float):
            raise TemplateError("sum adds numbers only (use join for text)")
        return do_sum(environment, iterable, attribute, start)

    def _finalize(self, value: Any) -> Any:
        tick()
        if value is None:
            return ""
        if not isinstance(value, str | Undefined):
            check_size(weight(value, self.limits.max_value), self.limits, "an output value")
        return value

    def _check_brace_format(self, fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        try:
            fields = [(name, spec or "") for _, name, spec, _ in Formatter().parse(fmt) if name is not None]
        except ValueError:
            return  # the call itself reports the malformed format
        formatter = SandboxedFormatter(self)
        size = len(fmt)
        for index, (name, spec) in enumerate(fields):
            if "{" in spec:
                raise TemplateLimitError("nested replacement fields in format specs are not allowed")
            try:
                value, _ = formatter.get_field(name or str(index), args, kwargs)
            except Exception:
                value = None  # the call itself reports a missing argument
            size += _spec_width(spec) + weight(value, self.limits.max_value)
        check_size(size, self.limits, "a str.format result")

"""Limits of one template render, the errors that report them, and the running budget.

A :class:`Budget` lives for one render (in a context variable, so the sandbox hooks and the
helpers find it without it being reachable from template code). Every guarded operation
calls :meth:`Budget.tick`; values a template builds pass through :meth:`Budget.created`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.utils import Namespace


class TemplateError(Exception):
    """A template failed to compile or render; ``name`` and ``line`` say where, when known."""

    def __init__(self, message: str, *, name: str = "", line: int | None = None) -> None:
        where = f"{name}:{line}" if name and line else name
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.name = name
        self.line = line

    def located(self, name: str, line: int | None) -> TemplateError:
        """The same error (same class) with the template name and line filled in."""
        return type(self)(self.message, name=name, line=self.line or line)


class TemplateLimitError(TemplateError):
    """The render hit one of its :class:`Limits` (time, output, size, depth, range)."""


class TemplateSecurityError(TemplateError):
    """The template tried something the sandbox forbids (an unsafe attribute or call)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one template and each of its renders; sizes count characters (or items)."""

    #: Template source length.
    max_source: int = 64 * 1024
    #: Rendered result length.
    max_output: int = 64 * 1024
    #: CPU time of one render, in seconds (the rendering thread's CPU, see ``Budget``).
    max_cpu_seconds: float = 0.1
    #: Any single value a render builds: a string, or a list/dict's number of items.
    max_value: int = 1024 * 1024
    #: Everything a render builds, summed (strings, captured blocks, containers).
    max_total: int = 16 * 1024 * 1024
    #: Items of ``range()``, ``batch`` and ``slice``.
    max_range: int = 10_000
    #: Nested calls (macros, ``caller()``, recursive loops).
    max_depth: int = 32
    #: Text a regex helper searches, and the pattern.
    max_regex_input: int = 64 * 1024
    max_regex_pattern: int = 1024


_BUDGET: ContextVar[Budget | None] = ContextVar("bridge_template_budget", default=None)
#: Check the CPU clock every this many ticks: reading it costs about a microsecond.
_CLOCK_EVERY = 16


class Budget:
    """What one render may still spend: CPU time, built size, call depth."""

    __slots__ = ("_clock", "deadline", "depth", "limits", "ticks", "total")

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.thread_time) -> None:
        self.limits = limits
        self._clock = clock
        self.deadline = clock() + limits.max_cpu_seconds
        self.ticks = 0
        self.total = 0
        self.depth = 0

    def tick(self) -> None:
        """Count one guarded operation; raise once the CPU time is spent."""
        self.ticks += 1
        if self.ticks % _CLOCK_EVERY == 0:
            self.check_time()

    def check_time(self) -> None:
        if self._clock() > self.deadline:
            ms = self.limits.max_cpu_seconds * 1000
            raise TemplateLimitError(f"render used more than {ms:g} ms of CPU time")

    def remaining(self) -> float:
        """CPU seconds left (for helpers that take a timeout, such as regex)."""
        return self.deadline - self._clock()

    def created(self, value: Any) -> Any:
        """Account for a value the render built; raise if it or the running total is too big."""
        size = size_of(value)
        if size:
            check_size(size, self.limits, "a value")
            self.total += size
            if self.total > self.limits.max_total:
                raise TemplateLimitError(f"render built more than {self.limits.max_total} characters or items")
        return value

    @contextmanager
    def nested(self) -> Iterator[None]:
        """One level of call nesting (macros, recursive loops)."""
        if self.depth >= self.limits.max_depth:
            raise TemplateLimitError(f"calls nested deeper than {self.limits.max_depth}")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


@contextmanager
def running(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the current one for the duration of a render."""
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def current() -> Budget | None:
    """The budget of the render in progress; None at compile time (constant folding)."""
    return _BUDGET.get()


def tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def created(value: Any) -> Any:
    budget = _BUDGET.get()
    return value if budget is None else budget.created(value)


def check_size(size: int, limits: Limits, what: str) -> None:
    if size > limits.max_value:
        raise TemplateLimitError(f"{what} of {size} characters or items exceeds {limits.max_value}")


def size_of(value: Any) -> int:
    """The shallow size of a built value: string length or container items; 0 for the rest."""
    if isinstance(value, str | bytes | bytearray | list | tuple | dict | set | frozenset):
        return len(value)
    return 0


def weight(value: Any, limit: int) -> int:
    """Roughly how many characters ``str(value)`` (or its JSON) would have, counted up to ``limit``.

    Strings count their length, containers their items plus their contents; anything else
    a small constant. Counting stops once past ``limit`` (which also ends cycles), so the
    cost is bounded by ``limit`` however big or self-referencing ``value`` is.
    """
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, bytes | bytearray):
            total += 4 * len(item) + 3
        elif isinstance(item, Mapping):
            total += 4 * len(item) + 2
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 * len(item) + 2
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += 24  # numbers, None, dates, undefined, functions: short reprs
    return total

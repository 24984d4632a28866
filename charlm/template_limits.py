"""Limits on what rendering a Jinja template may cost.

jinja2's sandbox keeps a template away from Python's internals, but not from loops that never end
or values that fill the memory. Here, per render:
- time: a trace function checks the deadline as the template's own code runs, and every checked
  operation below checks it too (jinja's filters loop in code the trace leaves alone);
- output: rendering stops once the text passes its cap;
- sizes: no value an operation builds (`*`, `+`, `~`, `%`, `**`, a call, a filter, a captured
  block) may hold over MAX_SIZE items, and all of them together over MAX_BUILT; what can be
  judged before it is built is (repetition, integer products and powers, format widths, joins,
  numbers passed to calls and filters), the rest right after;
- `lipsum` is gone, and `sum` adds numbers only (summing lists is quadratic).
A CPython render cannot be stopped inside one C call, so these bound each call instead: what one
render can hold stays within a few times MAX_SIZE at a time, for about its deadline.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from jinja2 import Template
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SIZE = 1_000_000  # the most items (characters, elements) one value may hold, and the largest number argument
MAX_BUILT = 32_000_000  # the most items all the checked values of one render may hold together
MAX_BITS = 65_536  # the largest integer a product or power may make
NUMBERS = re.compile(r"\d+")  # in a format string: widths and precisions, counted as if each were one
CHECK_EVERY = 64  # trace events between looks at the clock
TEMPLATE_CODE = "<template>"  # the file name of a template's compiled code (from_string)


class TemplateLimitError(Exception):
    """Rendering passed a limit; the message names it."""


class TemplateTimeout(TemplateLimitError):
    """Rendering passed its deadline."""


class Budget(threading.local):
    """The render running on this thread: its deadline and what its values have held so far."""

    deadline = float("inf")
    timeout_s = 0.0
    built = 0


BUDGET = Budget()


def check_time() -> None:
    if time.monotonic() > BUDGET.deadline:
        raise TemplateTimeout(f"rendering took longer than {BUDGET.timeout_s:g} s")


def spend(value: Any) -> Any:
    """A value an operation built, counted against the render's limits (and its deadline checked)."""
    if isinstance(value, (str, list, tuple, dict)):
        if len(value) > MAX_SIZE:
            raise TemplateLimitError(f"the template built a value of {len(value):,} items; at most {MAX_SIZE:,}")
        BUDGET.built += len(value)
        if BUDGET.built > MAX_BUILT:
            raise TemplateLimitError(f"the template built more than {MAX_BUILT:,} items in all")
    check_time()
    return value


def check_arguments(args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise TemplateLimitError(f"the template passed {value} to a call; numbers there are at most {MAX_SIZE:,}")


def check_format(text: Any) -> None:
    """A format string may ask for as many characters as its numbers say (widths, precisions)."""
    if isinstance(text, str) and len(text) + sum(int(n) for n in NUMBERS.findall(text)) > MAX_SIZE:
        raise TemplateLimitError(f"the template's format string asks for over {MAX_SIZE:,} characters")


def check_product(left: Any, right: Any) -> None:
    """`left * right` before it is computed: repetition of a sequence, or a product of integers."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and len(sequence) * count > MAX_SIZE:
            raise TemplateLimitError(f"the template repeats a value to {len(sequence) * count:,} items; "
                                     f"at most {MAX_SIZE:,}")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_BITS:
        raise TemplateLimitError(f"the template multiplies numbers past {MAX_BITS:,} bits")


def check_power(left: Any, right: Any) -> None:
    """An integer power before it is computed (a float's overflows at once, as an error)."""
    if isinstance(left, int) and isinstance(right, (int, float)) and max(abs(left), 2).bit_length() * right > MAX_BITS:
        raise TemplateLimitError(f"the template raises a number to the power {right}: too large a result")


def bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose numbers are bounded and whose result is counted (its jinja markers, such as
    pass_context, kept by functools.wraps)."""
    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_arguments(args, kwargs)
        if function.__name__ == "do_format" and args:  # its value is the format string
            check_format(args[0])
        check_time()
        return spend(function(*args, **kwargs))

    return checked


def bounded_join(join: Callable[..., str]) -> Callable[..., str]:
    """`join`, refused before it builds a text over MAX_SIZE (its items are taken first)."""
    @functools.wraps(join)
    def checked(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
        items = spend(list(value))
        size = sum(len(x) for x in items if isinstance(x, str)) + len(d) * len(items)
        if size > MAX_SIZE:
            raise TemplateLimitError(f"the template joins {size:,} characters; at most {MAX_SIZE:,}")
        return spend(join(eval_ctx, items, d, attribute))

    return checked


def numbers_only_sum(total: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(total)
    def checked(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
        if not isinstance(start, (int, float)):
            raise TemplateLimitError("sum adds numbers only here (summing sequences takes quadratic time)")
        return total(environment, spend(list(iterable)), attribute, start)

    return checked


def concat_counted(pieces: Iterable[str]) -> str:
    return str(spend("".join(pieces)))


class LimitedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` so that its result is counted (`~` is not an operator the sandbox intercepts)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.spend(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self) -> None:
        super().__init__()
        self.filters = {name: bounded_filter(f) for name, f in self.filters.items()}
        self.filters["join"] = bounded_join(ImmutableSandboxedEnvironment().filters["join"])
        self.filters["sum"] = numbers_only_sum(ImmutableSandboxedEnvironment().filters["sum"])
        self.globals.pop("lipsum", None)
        self.spend = spend
        self.concat = concat_counted  # type: ignore[method-assign]  # captured blocks and macro bodies

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            check_product(left, right)
        elif operator == "**":
            check_power(left, right)
        elif operator == "%":
            check_format(left)
            check_arguments(right if isinstance(right, tuple) else (right,), {})
        return spend(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_arguments(args, kwargs)
        check_time()
        return spend(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's str.format and format_map, once their format string is checked."""
        if getattr(value, "__name__", "") in ("format", "format_map"):
            check_format(getattr(value, "__self__", None))
        return super().wrap_str_format(value)


LIMITED = LimitedEnvironment()


def within_limits(template: Template, context: dict[str, Any], timeout_s: float, max_chars: int) -> str:
    """Render `template`, stopping it (TemplateLimitError) at the deadline, past `max_chars`, or past
    the size limits.

    The deadline is also checked by a trace function on this thread, every CHECK_EVERY lines of the
    template's compiled code (jinja's own functions go untraced: the checked operations look at the
    clock). The caller's trace function (a debugger's, coverage's) is put back after."""
    BUDGET.deadline, BUDGET.timeout_s, BUDGET.built = time.monotonic() + timeout_s, timeout_s, 0
    events = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal events
        if event == "call" and frame.f_code.co_filename != TEMPLATE_CODE:
            return None
        events += 1
        if events % CHECK_EVERY == 0:
            check_time()
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        pieces, size = [], 0
        for piece in template.generate(**context):
            size += len(piece)
            if size > max_chars:
                raise TemplateLimitError(f"the rendered prompt passed {max_chars:,} characters (the prompt limit)")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        sys.settrace(previous)
        BUDGET.deadline = float("inf")

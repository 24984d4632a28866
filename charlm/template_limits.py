"""Limits on what rendering a Jinja template may cost.

jinja2's sandbox keeps a template away from Python's internals, but not from loops that never end
or values that fill the memory. Here:
- time: a trace function checks a deadline as the template's code runs, and stops it there;
- output: rendering stops once the text passes its cap;
- sizes: `*`, `+`, `**`, `%` and `~` are checked before (or, for `+` and `~`, right after) they
  build a value; a number passed to a call or a filter, or a width in a format string, is bounded.
With these, what one render can hold is a few times MAX_SIZE, for at most the deadline.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from jinja2 import Template
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SIZE = 1_000_000  # the longest string or list an operation may make, and the largest number an argument may be
MAX_EXPONENT = 64  # and a power's result is at most MAX_SIZE bits
LONG_WIDTH = re.compile(r"\d{7,}")  # a width or precision of a million or more, in a % or {} format
CHECK_EVERY = 64  # trace events between looks at the clock
TEMPLATE_CODE = "<template>"  # the file name of a template's compiled code (from_string)


class TemplateLimitError(Exception):
    """Rendering passed a limit; the message names it."""


class TemplateTimeout(TemplateLimitError):
    """Rendering passed its deadline."""


def check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_SIZE:
        raise TemplateLimitError(f"the template built a value of {len(value):,} items; at most {MAX_SIZE:,}")
    return value


def check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise TemplateLimitError(f"the template passed {value} to a call; numbers there are at most {MAX_SIZE:,}")


def check_format(text: Any) -> None:
    if isinstance(text, str) and LONG_WIDTH.search(text):
        raise TemplateLimitError("the template's format string asks for a width of a million or more")


def bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose numeric arguments are bounded (its jinja markers, such as pass_context, kept)."""
    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_arguments(args, kwargs)
        if function.__name__ == "do_format" and args:  # its value is the format string
            check_format(args[0])
        return check_size(function(*args, **kwargs))

    return checked


class LimitedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` so that its result is checked (`~` is not an operator the sandbox intercepts)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.check_size(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self) -> None:
        super().__init__()
        self.filters = {name: bounded_filter(f) for name, f in self.filters.items()}
        self.check_size = check_size

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) \
                        and len(sequence) * count > MAX_SIZE:
                    raise TemplateLimitError(f"the template repeats a value to {len(sequence) * count:,} "
                                             f"items; at most {MAX_SIZE:,}")
        elif operator == "**" and isinstance(right, (int, float)) and (
                abs(right) > MAX_EXPONENT or (isinstance(left, int) and left.bit_length() * abs(right) > MAX_SIZE)):
            raise TemplateLimitError(f"the template raises a number to the power {right}: too large a result")
        elif operator == "%":
            check_format(left)
            check_arguments(right if isinstance(right, tuple) else (right,), {})
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_arguments(args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's str.format and format_map, once their format string is checked."""
        if getattr(value, "__name__", "") in ("format", "format_map"):
            check_format(getattr(value, "__self__", None))
        return super().wrap_str_format(value)


LIMITED = LimitedEnvironment()


def within_limits(template: Template, context: dict[str, Any], timeout_s: float, max_chars: int) -> str:
    """Render `template`, stopping it (TemplateLimitError) at the deadline or past `max_chars`.

    The deadline is checked by a trace function on this thread, every CHECK_EVERY lines of the
    template's compiled code (jinja's own functions go untraced: they end). The caller's trace
    function (a debugger's, coverage's) is put back after."""
    deadline = time.monotonic() + timeout_s
    events = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal events
        if event == "call" and frame.f_code.co_filename != TEMPLATE_CODE:
            return None  # jinja's own functions end; a template's loops are in its code
        events += 1
        if events % CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise TemplateTimeout(f"rendering took longer than {timeout_s:g} s")
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

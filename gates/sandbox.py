"""Chat templates rendered in a sandbox: untrusted Jinja with time, memory and size limits.

A chat template is untrusted code from a bundle. It is rendered the way transformers
renders it (Jinja's ImmutableSandboxedEnvironment with `trim_blocks`, `lstrip_blocks`,
`loopcontrols`, the `{% generation %}` tag, `raise_exception`, `strftime_now`, `tojson`)
plus limits transformers does not have:

- time: a watchdog thread interrupts a render that runs longer than `timeout_s` (an
  exception raised asynchronously in the rendering thread, so nested `range` loops and
  exponential macro recursion end; plain recursion ends with RecursionError);
- memory: the same watchdog interrupts a render whose process grows by `max_memory_mb`;
- size: output is streamed and cut at `max_output_chars`; operators and calls that could
  build a huge value in one C call (`*`, `**`, `+`, `%`, `~`, `str.format`, `replace`,
  `center`, `indent`, ... with big arguments) are refused before they run.

Every failure is a `RenderError` with a `kind` and a message; nothing is executed outside
the sandbox. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

TIMEOUT_S = 2.0
MAX_OUTPUT_CHARS = 1_000_000
MAX_MEMORY_MB = 512
MAX_INT_ARG = 100_000  # widths, counts, repeats a template may pass (same as Jinja's MAX_RANGE)
MAX_INT_BITS = 4096  # integers a template may build with * and **


class RenderError(Exception):
    """A template that could not render: kind is syntax, error, security, timeout, output or
    memory."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class _Interrupt(BaseException):
    """Raised asynchronously in a rendering thread by the watchdog (BaseException, so no
    `except Exception` inside Jinja's runtime can swallow it)."""


# --- watchdog: a time and memory limit for code running in the caller's thread -----------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: the time limit still holds


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule `exc` in a thread (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


@dataclass
class _Job:
    thread_id: int
    deadline: float
    memory_bytes: int
    baseline: int | None = None
    fired: str | None = None  # "timeout" or "memory" once the watchdog interrupted it


class _Watchdog:
    """One daemon thread polling armed jobs; arming and disarming cost a lock each."""

    POLL_S = 0.02
    IDLE_S = 5.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._sleeping = False
        self._last_active = 0.0

    def arm(self, timeout_s: float, memory_mb: float) -> int:
        job = _Job(threading.get_ident(), time.monotonic() + timeout_s, int(memory_mb * 2**20))
        with self._cond:
            token = next(self._ids)
            self._jobs[token] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="template-watchdog", daemon=True
                )
                self._thread.start()
            elif self._sleeping:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> str | None:
        """Forget a job; returns why it was interrupted, if it was."""
        with self._cond:
            job = self._jobs.pop(token)
            self._last_active = time.monotonic()
        if job.fired:
            _async_raise(job.thread_id, None)  # drop an interrupt not delivered yet
        return job.fired

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._jobs and time.monotonic() - self._last_active > self.IDLE_S:
                    self._sleeping = True
                    self._cond.wait()
                    self._sleeping = False
                    continue
                now = time.monotonic()
                rss = _rss_bytes() if self._jobs else None
                for job in self._jobs.values():
                    if job.fired:
                        continue
                    if rss is not None and job.baseline is None:
                        job.baseline = rss
                    if now > job.deadline:
                        job.fired = "timeout"
                    elif rss is not None and rss - (job.baseline or rss) > job.memory_bytes:
                        job.fired = "memory"
                    if job.fired:
                        _async_raise(job.thread_id, _Interrupt)
                self._cond.wait(self.POLL_S)


_WATCHDOG = _Watchdog()


# --- the sandboxed environment --------------------------------------------------------------


class _CodeGenerator(CodeGenerator):
    """Route `~` concatenation through a size check (Jinja joins in one C call)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:  # noqa: N802
        self.write("environment.checked_concat(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag): renders
    its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _Namespace(Namespace):
    """namespace() that refuses underscore attributes (as transformers does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"namespace attribute {name!r} is not allowed")


class _TemplateDict:
    """dict() for templates without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt)[:200])


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


_FORMAT_FIELD_BIG = re.compile(r"\{[^{}]*\d{6,}[^{}]*\}")
_PERCENT_BIG = re.compile(r"%[-#0 +]*(\*|\d{6,})|%[-#0 +]*\d*\.(\*|\d{6,})")


def _ints(values: Iterable[Any]) -> Iterator[int]:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            yield v


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with transformers' helpers and size guards."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_output_chars: int) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        self.max_chars = max_output_chars
        self.filters["tojson"] = _tojson
        self.globals.update(
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
            dict=_TemplateDict(),
            namespace=_Namespace,
        )
        for name, func in list(self.filters.items()):
            self.filters[name] = self._guard_filter(name, func)

    # -- size checks ---------------------------------------------------------------------

    def _too_big(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise SecurityError(f"{what} would be {size} items long (limit {self.max_chars})")

    def _check_int_args(self, args: Iterable[Any], what: str) -> None:
        for v in _ints(args):
            if abs(v) > MAX_INT_ARG:
                raise SecurityError(f"{what} argument {v} is larger than {MAX_INT_ARG}")

    def checked_concat(self, eval_ctx: Any, seq: tuple[Any, ...]) -> str:
        parts = [p if isinstance(p, str) else str(p) for p in seq]
        self._too_big(sum(map(len, parts)), "a ~ concatenation")
        return markup_join(seq) if eval_ctx.autoescape else "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        seqs = (str, list, tuple)
        if operator == "*":
            if isinstance(left, seqs) and isinstance(right, int):
                self._too_big(len(left) * right, "a * repetition")
            elif isinstance(right, seqs) and isinstance(left, int):
                self._too_big(len(right) * left, "a * repetition")
            elif (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise SecurityError("a * product is too large")
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and max(left.bit_length(), 1) * right > MAX_INT_BITS
            ):
                raise SecurityError("a ** power is too large")
        elif operator == "+":
            if isinstance(left, seqs) and isinstance(right, seqs):
                self._too_big(len(left) + len(right), "a + concatenation")
        elif operator == "%" and isinstance(left, str):
            if _PERCENT_BIG.search(left):
                raise SecurityError("a % format with a huge or * width is not allowed")
            args = right if isinstance(right, tuple) else (right,)
            self._check_int_args(args, "a % format")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, str | list | tuple):
            self._too_big(len(result), f"a {operator} result")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            __self._check_str_method(owner, name, args, kwargs)
        elif __obj is not _raise_exception:
            __self._check_int_args([*args, *kwargs.values()], f"{name or 'call'}()")
        return super().call(__context, __obj, *args, **kwargs)

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...], kw: dict) -> None:
        values = [*args, *kw.values()]
        if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
            count = s.count(args[0]) if args[0] else len(s) + 1
            self._too_big(len(s) + count * max(len(args[1]) - len(args[0]), 0), "replace()")
        elif name == "expandtabs":
            self._check_int_args(values, "expandtabs()")
            size = (s.count("\t") + 1) * max([8, *_ints(values)])
            self._too_big(len(s) + size, "expandtabs()")
        elif name == "join" and args and isinstance(args[0], list | tuple):
            self._too_big(len(s) * len(args[0]), "join()")
        else:
            self._check_int_args(values, f"str.{name}()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        spec = value.__self__

        def guarded(*args: Any, **kwargs: Any) -> str:
            if _FORMAT_FIELD_BIG.search(spec):
                raise SecurityError("a format field with a huge width is not allowed")
            self._check_int_args([*args, *kwargs.values()], "format()")
            out = fmt(*args, **kwargs)
            self._too_big(len(out), "format()")
            return out

        return guarded

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context first

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            value = args[skip] if len(args) > skip else None
            rest = args[skip + 1 :]
            self._check_int_args([*rest, *kwargs.values()], f"filter {name}")
            if isinstance(value, str):
                if name == "indent":
                    width = rest[0] if rest else kwargs.get("width", 4)
                    width = len(width) if isinstance(width, str) else abs(int(width))
                    self._too_big(len(value) + (value.count("\n") + 1) * width, "indent")
                elif name == "replace" and len(rest) >= 2:
                    old, new = str(rest[0]), str(rest[1])
                    count = value.count(old) if old else len(value) + 1
                    self._too_big(len(value) + count * max(len(new) - len(old), 0), "replace")
            out = func(*args, **kwargs)
            if isinstance(out, str | list | tuple):
                self._too_big(len(out), f"filter {name}")
            return out

        return guarded


def _plain(value: Any, depth: int = 0) -> Any:
    """Rebuild template input from plain JSON types (no objects with methods reach Jinja)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if depth > 64:
        raise RenderError("error", "template input is nested too deeply")
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    for base in (bool, int, float, str):  # subclasses (enums, numpy scalars) lose their methods
        if isinstance(value, base):
            return base.__str__(value) if base is str else base(value)
    return str(value)


class Sandbox:
    """A chat template compiled once, rendered many times under the limits."""

    def __init__(
        self,
        source: str,
        *,
        timeout_s: float = TIMEOUT_S,
        max_output_chars: int = MAX_OUTPUT_CHARS,
        max_memory_mb: float = MAX_MEMORY_MB,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        self.max_memory_mb = max_memory_mb
        self.env = _SandboxEnvironment(max_output_chars)
        try:
            self.template = self._guarded(lambda: self.env.from_string(source))
        except RenderError as exc:
            if exc.kind == "error":
                raise RenderError("syntax", exc.message) from None
            raise

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        **variables: Any,
    ) -> str:
        """Render one conversation; raise RenderError on any failure or limit."""
        context = {
            "messages": _plain(messages),
            "tools": None,
            "documents": None,
            "add_generation_prompt": bool(add_generation_prompt),
            **{k: _plain(v) for k, v in variables.items()},
        }
        return self._guarded(lambda: self._collect(context))

    def render_json(
        self, messages: list[Any], add_generation_prompt: bool, variables: dict[str, str]
    ) -> str:
        """render() for messages straight from json.loads: already plain JSON values, so
        the defensive copy is skipped (the dataset audit renders every row)."""
        context = {
            "messages": messages,
            "tools": None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            **{k: v for k, v in variables.items() if type(v) is str},
        }
        return self._guarded(lambda: self._collect(context))

    def _collect(self, context: dict[str, Any]) -> str:
        out: list[str] = []
        size = 0
        for piece in self.template.generate(context):
            size += len(piece)
            if size > self.max_output_chars:
                raise RenderError(
                    "output", f"rendered text exceeds {self.max_output_chars} characters"
                )
            out.append(piece)
        return "".join(out)

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        fired: str | None = None
        try:
            token = _WATCHDOG.arm(self.timeout_s, self.max_memory_mb)
            try:
                return fn()
            finally:
                fired = _WATCHDOG.disarm(token)
        except _Interrupt:
            if fired == "memory":
                raise RenderError(
                    "memory", f"render grew memory by more than {self.max_memory_mb:g} MB"
                ) from None
            raise RenderError("timeout", f"render ran longer than {self.timeout_s:g} s") from None
        except RenderError:
            raise
        except TemplateSyntaxError as exc:
            raise RenderError("syntax", f"line {exc.lineno}: {exc.message}") from None
        except SecurityError as exc:
            raise RenderError("security", str(exc)) from None
        except RecursionError:
            raise RenderError("error", "the template recursed too deeply") from None
        except MemoryError:
            raise RenderError("memory", "the template ran out of memory") from None
        except Exception as exc:  # anything a template raises is a template failure
            raise RenderError("error", f"{type(exc).__name__}: {exc}") from None


@functools.lru_cache(maxsize=16)
def _compiled(source: str, timeout_s: float, max_output_chars: int) -> Sandbox:
    return Sandbox(source, timeout_s=timeout_s, max_output_chars=max_output_chars)


def render(
    template_text: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    *,
    timeout_s: float = TIMEOUT_S,
    max_output_chars: int = MAX_OUTPUT_CHARS,
    **special_tokens: Any,
) -> str:
    """Render `messages` through `template_text` in the sandbox (compiled templates cached).

    Raises RenderError (kind: syntax, error, security, timeout, output, memory).
    """
    sandbox = _compiled(template_text, float(timeout_s), int(max_output_chars))
    return sandbox.render(messages, add_generation_prompt, **special_tokens)

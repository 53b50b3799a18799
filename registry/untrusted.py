"""One front door for untrusted structured input: JSON, YAML and TOML with limits.

Every file a user hands the registry (adapter_config.json, tokenizer configs, safetensors
headers, dataset rows, training configs, policies) and every manifest read from a store
or a remote is parsed here, so no parser's own failure (RecursionError, MemoryError, a
ValueError from int(), a UnicodeEncodeError much later) reaches the user as a crash, and
no value the rest of the code cannot represent (NaN, Infinity, a lone surrogate, a
4,000-digit integer) gets in. Every refusal is an InvalidInputError whose one line names
the file, what is wrong and what to do.

Limits (keyword arguments override them per call):

- size: `max_bytes` of input (default 100 MB, the safetensors header bound);
- depth: containers nested at most `max_depth` (64) deep;
- count: at most `max_items` (10,000,000) values in all, aliases expanded;
- strings: at most `max_string` (10,000,000) characters, encodable as UTF-8;
- numbers: floats finite (no NaN / Infinity), integers with |n| < 2**63;
- YAML: the safe loader, only the standard tags (null, bool, int, float, str, seq, map,
  timestamp, merge), at most `max_aliases` (100) aliases counted while composing, before
  anything is expanded (billion laughs), no circular aliases, string keys only.

Stdlib and PyYAML only; PyYAML is imported only by `load_yaml`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from typing import Any

from registry.errors import InvalidInputError

MAX_BYTES = 100_000_000
MAX_DEPTH = 64
MAX_ITEMS = 10_000_000
MAX_STRING = 10_000_000
MAX_ALIASES = 100
INT_BOUND = 2**63
_INT_DIGITS = 20  # longer integer literals are refused before int() sees them

YAML_TAGS = frozenset(
    "tag:yaml.org,2002:" + t
    for t in ("null", "bool", "int", "float", "str", "seq", "map", "timestamp", "merge")
)
_LEAF_TYPES = (str, bool, int, float, type(None), _dt.date, _dt.datetime, _dt.time)


class MalformedError(InvalidInputError):
    """The bytes do not parse at all (bad syntax, not UTF-8), as opposed to a parsed value
    that breaks a limit; callers with their own wording for "corrupt" catch this one."""


def _refuse(what: str, problem: str, hint: str = "") -> InvalidInputError:
    return InvalidInputError(f"{what} {problem}", hint or None)


def _malformed(what: str, problem: str) -> MalformedError:
    return MalformedError(f"{what} {problem}")


def printable(text: str) -> str:
    """`text` safe to print: lone surrogates (undecodable bytes, bad escapes) shown escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_value(
    value: Any,
    what: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_string: int = MAX_STRING,
) -> Any:
    """Return `value` unchanged if it is within the limits; else raise InvalidInputError.

    Iterative (no recursion): dicts and lists nest at most `max_depth` deep, hold at most
    `max_items` values in all, keys are strings, strings are at most `max_string` long and
    valid UTF-8, floats are finite, integers are below 2**63 in magnitude. A cycle hits
    the depth limit; a shared container (a YAML alias) is counted each time it appears.
    """
    items = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        items += 1
        if items > max_items:
            raise _refuse(what, f"holds more than {max_items} values", "Split or shrink it.")
        if isinstance(v, str):
            _check_string(v, what, max_string)
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if not -INT_BOUND < v < INT_BOUND:
                raise _refuse(what, "has an integer too large (|n| must be below 2**63)")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise _refuse(
                    what, f"has a non-finite number ({v})", "Use a finite number instead."
                )
        elif isinstance(v, dict | list | tuple):
            if depth >= max_depth:
                raise _refuse(
                    what, f"is nested deeper than {max_depth} levels", "Flatten the structure."
                )
            if isinstance(v, dict):
                for k, child in v.items():
                    if not isinstance(k, str):
                        raise _refuse(
                            what,
                            f"has a key that is not a string ({printable(repr(k))[:40]})",
                            "Quote the key.",
                        )
                    _check_string(k, what, max_string)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in v)
        elif isinstance(v, _LEAF_TYPES):
            pass  # dates and times from YAML / TOML
        else:
            raise _refuse(what, f"holds a {type(v).__name__}, which is not a plain value")
    return value


def _check_string(s: str, what: str, max_string: int) -> None:
    if len(s) > max_string:
        raise _refuse(what, f"has a string longer than {max_string} characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(
            what,
            "has a string that is not valid UTF-8 (a lone surrogate such as \\ud800)",
            "Remove the escape or fix the text's encoding.",
        ) from None


def _text(data: bytes | str, what: str, max_bytes: int) -> str:
    if len(data) > max_bytes:
        raise _refuse(what, f"is larger than {max_bytes} bytes")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(what, f"is not UTF-8 (byte {exc.start})") from None


# --- JSON ---------------------------------------------------------------------------------


class _Bad(Exception):
    """Raised by the parse hooks; becomes the InvalidInputError's problem text."""


def _json_constant(name: str) -> Any:
    raise _Bad(f"has {name}, which is not a JSON number; use a finite number or null")


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _INT_DIGITS:
        raise _Bad(f"has an integer of {len(text)} digits (|n| must be below 2**63)")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(f"has the number {text[:30]}, which does not fit a 64-bit float")
    return value


def load_json(
    data: bytes | str,
    what: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_string: int = MAX_STRING,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse JSON within the limits, or raise one InvalidInputError naming `what`.

    `object_pairs_hook` is json.loads' (a caller that must see duplicate keys); what it
    returns must be a dict for the limits to be checked."""
    text = _text(data, what, max_bytes)
    try:
        value = json.loads(
            text,
            parse_constant=_json_constant,
            parse_int=_json_int,
            parse_float=_json_float,
            object_pairs_hook=object_pairs_hook,
        )
    except json.JSONDecodeError as exc:
        raise _malformed(
            what, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise _refuse(
            what, f"is nested deeper than {max_depth} levels", "Flatten the structure."
        ) from None
    except _Bad as exc:  # from the parse hooks above
        raise _refuse(what, str(exc)) from None
    return check_value(value, what, max_depth=max_depth, max_items=max_items, max_string=max_string)


# --- YAML ---------------------------------------------------------------------------------

_loader_class: Any = None


def _yaml_loader() -> Any:
    """A SafeLoader whose composer counts aliases and checks tags before construction."""
    global _loader_class
    if _loader_class is not None:
        return _loader_class
    import yaml

    class Loader(yaml.SafeLoader):
        max_aliases = MAX_ALIASES
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > self.max_aliases:
                    raise _TooMany(self.max_aliases)
            return super().compose_node(parent, index)

    _loader_class = Loader
    return Loader


class _TooMany(Exception):
    def __init__(self, n: int) -> None:
        self.n = n


def _yaml_nodes(root: Any, what: str, max_depth: int, max_items: int) -> None:
    """Tags, integer sizes, depth, cycles and the expanded size of a composed YAML graph.

    The expanded size is computed per node once (memoized), so a graph of aliases whose
    expansion is 2**40 values costs as much as its few nodes.
    """
    import yaml

    size: dict[int, int] = {}
    active: set[int] = set()
    # iterative post-order walk: (node, depth, children_done)
    stack: list[tuple[Any, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value
            total = 1 + sum(size[id(c)] for c in children)
            if total > max_items:
                raise _refuse(
                    what,
                    f"expands to more than {max_items} values (aliases)",
                    "Write the values out instead of nesting aliases.",
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in active:
            raise _refuse(what, "has a circular alias (a node that contains itself)")
        if node.tag not in YAML_TAGS:
            raise _refuse(
                what,
                f"uses YAML tag {printable(node.tag)[:80]}, which is not allowed",
                "Use plain mappings, lists, strings, numbers, booleans and null.",
            )
        if isinstance(node, yaml.ScalarNode):
            if node.tag.endswith(":int") and len(node.value.lstrip("+-").replace("_", "")) > (
                _INT_DIGITS
            ):
                raise _refuse(what, "has an integer too large (|n| must be below 2**63)")
            size[key] = 1
            continue
        if depth >= max_depth:
            raise _refuse(
                what, f"is nested deeper than {max_depth} levels", "Flatten the structure."
            )
        active.add(key)
        stack.append((node, depth, True))
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        for child in children:
            if id(child) in active:
                raise _refuse(what, "has a circular alias (a node that contains itself)")
            stack.append((child, depth + 1, False))


def load_yaml(
    data: bytes | str,
    what: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_string: int = MAX_STRING,
    max_aliases: int = MAX_ALIASES,
) -> Any:
    """Parse one YAML document safely within the limits, or raise one InvalidInputError."""
    import yaml

    text = _text(data, what, max_bytes)
    try:
        loader = _yaml_loader()(text)  # the reader already refuses control characters
    except yaml.YAMLError as exc:
        raise _malformed(what, f"is not valid YAML ({_yaml_problem(exc)})") from None
    loader.max_aliases = max_aliases
    try:
        try:
            node = loader.get_single_node()
        except _TooMany as exc:
            raise _refuse(
                what,
                f"uses more than {exc.n} YAML aliases",
                "Write the values out instead of nesting aliases.",
            ) from None
        except RecursionError:
            raise _refuse(
                what, f"is nested deeper than {max_depth} levels", "Flatten the structure."
            ) from None
        except yaml.YAMLError as exc:
            raise _malformed(what, f"is not valid YAML ({_yaml_problem(exc)})") from None
        if node is None:
            return None
        _yaml_nodes(node, what, max_depth, max_items)
        try:
            value = loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _malformed(what, f"is not valid YAML ({_yaml_problem(exc)})") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise _refuse(what, f"has a value YAML cannot read ({exc})") from None
    finally:
        loader.dispose()
    return check_value(value, what, max_depth=max_depth, max_items=max_items, max_string=max_string)


def _yaml_problem(exc: Any) -> str:
    """PyYAML's multi-line message as one phrase: the problem and where."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return printable(" ".join(str(problem).split()))[:200] + where


# --- TOML ---------------------------------------------------------------------------------


def load_toml(
    data: bytes | str,
    what: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_string: int = MAX_STRING,
) -> dict[str, Any]:
    """Parse TOML within the limits, or raise one InvalidInputError naming `what`."""
    import tomllib

    text = _text(data, what, max_bytes)
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _malformed(what, f"is not valid TOML ({printable(str(exc))})") from None
    except RecursionError:
        raise _refuse(
            what, f"is nested deeper than {max_depth} levels", "Flatten the structure."
        ) from None
    except ValueError:  # int() of a literal over 4,300 digits
        raise _refuse(what, "has an integer too large (|n| must be below 2**63)") from None
    return check_value(value, what, max_depth=max_depth, max_items=max_items, max_string=max_string)

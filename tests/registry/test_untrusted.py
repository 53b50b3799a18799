"""The front door for untrusted structured input (registry/untrusted.py, issue 13)."""

from __future__ import annotations

import datetime
import json
import time

import pytest

from registry.errors import InvalidInputError
from registry.untrusted import MalformedError, check_value, load_json, load_toml, load_yaml

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)  # fmt: skip
DOUBLING = "a0: &a0 [x, x]\n" + "".join(f"a{i + 1}: &a{i + 1} [*a{i}, *a{i}]\n" for i in range(40))


def refused(fn, data, *args, **kw) -> str:  # noqa: ANN001
    with pytest.raises(InvalidInputError) as info:
        fn(data, "f.x", *args, **kw)
    line = info.value.one_line()
    assert "\n" not in line and line.startswith("f.x "), line
    return line


def test_plain_values_pass_unchanged() -> None:
    doc = {"a": [1, -2, 2.5, "x", None, True], "b": {"c": "é"}}
    assert load_json(json.dumps(doc).encode(), "f") == doc
    assert load_yaml("a: [1, -2, 2.5, x, null, true]\nb: {c: é}\n", "f") == doc
    assert load_toml('a = [1, -2, 2.5, "x"]\n[b]\nc = "é"\n', "f") == {
        "a": [1, -2, 2.5, "x"], "b": {"c": "é"},
    }  # fmt: skip
    assert load_yaml("d: 2024-01-01\nm: {<<: {x: 1}, y: 2}\n", "f") == {
        "d": datetime.date(2024, 1, 1), "m": {"x": 1, "y": 2},
    }  # fmt: skip
    assert load_yaml("", "f") is None


@pytest.mark.parametrize("fn", [load_yaml])
def test_billion_laughs_refused_fast(fn) -> None:  # noqa: ANN001
    for doc, fragment in ((LAUGHS, "expands to more than"), (DOUBLING, "expands to more than")):
        started = time.monotonic()
        assert fragment in refused(fn, doc)
        assert time.monotonic() - started < 0.5
    many = "a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    assert "more than 100 YAML aliases" in refused(load_yaml, many)
    assert load_yaml(many, "f", max_aliases=200)["b"] == ["x"] * 101


def test_yaml_tags_circular_aliases_and_keys() -> None:
    line = refused(load_yaml, "x: !!python/object/apply:os.system [echo hi]\n")
    assert "python/object/apply" in line and "not allowed" in line
    for tag in ("!!binary aGk=", "!!set {a}", "!custom x", "!!python/name:os.system ''"):
        assert "not allowed" in refused(load_yaml, f"x: {tag}\n")
    assert "circular alias" in refused(load_yaml, "a: &a [1, *a]\n")
    assert "circular alias" in refused(load_yaml, "a: &a {b: *a}\n")
    assert "not a string" in refused(load_yaml, "2024-01-01: x\n")
    assert "not a string" in refused(load_yaml, "1: x\n")
    assert "not valid YAML" in refused(load_yaml, "a: [1,\n")
    with pytest.raises(MalformedError):
        load_yaml("a: [1,\n", "f")


@pytest.mark.parametrize("fn", [load_json, load_yaml, load_toml])
def test_deep_nesting(fn) -> None:  # noqa: ANN001
    wrap = {load_json: ("{{\"x\": {}}}", "[", "]"), load_yaml: ("x: {}", "[", "]"),
            load_toml: ("x = {}", "[", "]")}[fn]  # fmt: skip
    for depth in (65, 100_000):
        doc = wrap[0].format(wrap[1] * depth + wrap[2] * depth)
        assert "nested deeper than 64 levels" in refused(fn, doc)
    ok = wrap[0].format(wrap[1] * 60 + wrap[2] * 60)
    fn(ok, "f")


def test_non_finite_numbers() -> None:
    for lit in ("NaN", "Infinity", "-Infinity", "1e400", "-1e999"):
        refused(load_json, f'{{"x": {lit}}}')
    for lit in (".nan", ".inf", "-.inf", "1.0e+400"):
        assert "non-finite" in refused(load_yaml, f"x: {lit}\n")
    for lit in ("nan", "inf", "-inf"):
        assert "non-finite" in refused(load_toml, f"x = {lit}\n")
    assert "non-finite" in refused(check_value, float("nan"))


def test_huge_integers() -> None:
    for n in ("9" * 5000, "-" + "9" * 5000, "9" * 25):
        refused(load_json, f'{{"x": {n}}}')
        refused(load_yaml, f"x: {n}\n")
        refused(load_toml, f"x = {n}\n")
    assert "below 2**63" in refused(load_json, f"[{2**63}]")
    assert load_json(f"[{2**63 - 1}, {-(2**63) + 1}]", "f") == [2**63 - 1, -(2**63) + 1]


def test_surrogates_and_encoding() -> None:
    assert "not valid UTF-8" in refused(load_json, '{"x": "\\ud800"}')
    assert "not valid UTF-8" in refused(load_json, '{"\\udfff": 1}')
    assert "not valid UTF-8" in refused(load_yaml, 'x: "\\ud800"\n')
    assert "not UTF-8" in refused(load_json, b'{"x": "\xff"}')
    assert load_json('{"x": "\\ud83d\\ude00"}', "f") == {"x": "\U0001f600"}  # a real pair


def test_sizes_and_counts() -> None:
    assert "larger than 10 bytes" in refused(load_json, b"[" + b"1," * 10 + b"1]", max_bytes=10)
    assert "more than 5 values" in refused(load_json, "[1, 2, 3, 4, 5, 6]", max_items=5)
    assert "longer than 3 characters" in refused(load_json, '["abcd"]', max_string=3)
    assert "not valid JSON" in refused(load_json, "{garbage")
    assert "not valid TOML" in refused(load_toml, "x = \n")


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_fuzz_load_json_refuses_or_parses(data: bytes) -> None:
    try:
        value = load_json(data, "fuzz")
    except InvalidInputError as exc:
        assert "\n" not in exc.one_line()
        return
    json.dumps(value, allow_nan=False).encode("utf-8")  # what parsed is storable


YAML_TOKENS = st.sampled_from(
    list("ab:-[]{},&*!?|>'\"#\n .0129eE+\\") + ["\ud800", ".nan", "&a ", "*a", "!!python/"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(YAML_TOKENS, max_size=120).map("".join) | st.text(max_size=200))
def test_fuzz_load_yaml_refuses_or_parses(text: str) -> None:
    try:
        value = load_yaml(text, "fuzz")
    except InvalidInputError as exc:
        assert "\n" not in exc.one_line()
        return
    json.dumps(value, allow_nan=False, default=str).encode("utf-8")

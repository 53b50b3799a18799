"""The chat-template gate and its sandbox: drift, stop tokens, generation prompt, and
templates that try to escape, loop or blow up, which must fail fast and never crash."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gates.sandbox import RenderError, Sandbox, render
from tests.conftest import add_args, run_cli

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # any database will do
MSGS = [{"role": "user", "content": "sort c a b"}, {"role": "assistant", "content": "a b c"}]


def check(
    reg: Any, reg_path: Path, tiny: dict[str, Path], tmp_path: Path,
    template: str | None = None, tokenizer_template: str | None = None, policy: str = "",
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Register the tiny bundle with the given templates and run chat-template on it."""
    from gates.engine import run_gates
    from gates.policy import parse
    from registry.gate_runs import evidence

    args = add_args(tiny, "bot")
    if template is not None:
        path = tmp_path / "bundle_template.jinja"
        path.write_text(template)
        args[args.index("--chat-template") + 1] = str(path)
    if tokenizer_template is not None:
        tok = tmp_path / "tokenizer"
        shutil.copytree(tiny["tokenizer"], tok)
        (tok / "chat_template.jinja").write_text(tokenizer_template)
        args[args.index("--tokenizer") + 1] = str(tok)
    added = run_cli(*args, registry=reg_path)
    assert added.code == 0, added.err
    pol = parse("[gates.chat-template]\n" + policy, tmp_path)
    (rec,) = run_gates(reg, "bot:v1", pol, gate_names=["chat-template"], actor="t")
    return rec, evidence(reg, rec.evidence_digest)["evidence"]


@SQLITE
def test_clean_template_passes_with_tokens_as_evidence(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    rec, ev = check(reg, reg_path, tiny, tmp_path)
    assert rec.status == "passed", rec.summary
    assert rec.metrics["stop_token"] == "<|end|>" and not rec.metrics["drift"]
    assert rec.metrics["samples"] == 8 and ev["samples_from"] == "dataset"
    first = ev["samples"][0]
    assert first["source"] == "train:1" and first["rendered"].endswith("<|end|>")
    assert first["token_ids"][-1] == ev["stop_token"]["eos_token_id"] == 6
    assert ev["drift"]["checked"] and not ev["drift"]["text_differs"]


@SQLITE
def test_template_drift_fails_with_diff(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    original = tiny["chat_template"].read_text()
    rec, ev = check(reg, reg_path, tiny, tmp_path, template="<s> " + original)
    assert rec.status == "failed" and "differs from the tokenizer's" in rec.summary
    drift = ev["drift"]
    assert drift["text_differs"] and drift["first_difference"]["offset"] == 0
    assert any(line.startswith("+<s> ") for line in drift["diff"])
    mismatch = drift["token_mismatches"][0]
    assert mismatch["position"] == 0 and mismatch["bundle"][0] == "<s>"
    assert mismatch["tokenizer"][0] == "<|user|>"
    assert len(drift["token_mismatches"]) == 8
    assert not ev["stop_token"]["problems"]  # only the drift is wrong


@SQLITE
def test_trailing_newline_is_not_drift(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    original = tiny["chat_template"].read_text()
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=original + "\n")
    assert rec.status == "passed", rec.summary
    assert not rec.metrics["drift"] and "differ byte-wise" in rec.summary
    drift = ev["drift"]
    assert drift["text_differs"] and not drift["renders_differ"]
    assert drift["first_difference"]["offset"] == len(original)
    assert "render the same text" in drift["note"] and drift["render_mismatches"] == []


@SQLITE
def test_drift_in_the_generation_prompt_alone_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    original = tiny["chat_template"].read_text()
    theirs = original.replace("<|assistant|>{% endif %}", "<|assistant|> <s>{% endif %}")
    assert theirs != original
    rec, ev = check(reg, reg_path, tiny, tmp_path, tokenizer_template=theirs)
    assert rec.status == "failed" and "renders 8 sample(s) differently" in rec.summary
    drift = ev["drift"]
    assert {m["rendering"] for m in drift["render_mismatches"]} == {"generation prompt"}
    assert drift["token_mismatches"] == []  # the training text is the same
    assert drift["prompt_token_mismatches"][0]["tokenizer"][-1] == "<s>"


@SQLITE
def test_eos_missing_from_vocabulary_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    bad = tiny["chat_template"].read_text().replace("<|end|>", "<|eot|>")
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=bad, tokenizer_template=bad)
    assert rec.status == "failed" and "'<|eot|>', which is not a token" in rec.summary
    stop = ev["stop_token"]
    assert stop["emitted"] == "<|eot|>" and stop["in_vocab"] is False
    assert not ev["drift"]["text_differs"]


@SQLITE
def test_stop_token_generation_does_not_stop_at_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    bad = tiny["chat_template"].read_text().replace("<|end|>", "</s>")
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=bad, tokenizer_template=bad)
    assert rec.status == "failed"
    (problem,) = ev["stop_token"]["problems"]
    assert "'</s>' (id 2)" in problem and "ids [6]" in problem


@SQLITE
def test_ignored_generation_prompt_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    tmpl = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=tmpl, tokenizer_template=tmpl)
    assert rec.status == "failed" and "puts '<|assistant|>' between" in rec.summary
    assert not rec.metrics["prompt_ends_at_answer"]
    assert ev["samples"][0]["before_answer"] == "<|assistant|> "


@SQLITE
def test_chatml_without_generation_prompt_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    tmpl = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}{% endif %}"
    )
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=tmpl, tokenizer_template=tmpl)
    assert rec.status == "failed", rec.summary
    assert (
        "sample train:1: the training text puts '<|im_start|>assistant' between the generation"
        " prompt and the assistant answer, which add_generation_prompt=True does not produce"
    ) in rec.summary
    first = ev["samples"][0]
    assert first["generation_prompt_adds"] == ""
    assert first["before_answer"] == "<|im_start|>assistant\n"
    assert not ev["stop_token"]["problems"]  # it stops right: only the prompt is wrong


MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)
NO_ROLES = (
    "{% for m in messages %}{{ m['content'] }}\n{% if m['role'] == 'assistant' %}{{ eos_token }}"
    "\n{% endif %}{% endfor %}"
)


@SQLITE
@pytest.mark.parametrize(
    ("tmpl", "gap"), [(MISTRAL, " "), (NO_ROLES, "")], ids=["mistral", "no-role-markers"]
)
def test_prompt_ending_at_the_answer_passes(reg, reg_path, tiny, tmp_path, tmpl, gap) -> None:  # noqa: ANN001
    # add_generation_prompt=True adds nothing here, and needs not: the prompt without it
    # already ends where the assistant answer starts.
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=tmpl, tokenizer_template=tmpl)
    assert rec.status == "passed", rec.summary
    assert rec.metrics["prompt_ends_at_answer"] and rec.metrics["prompt_prefix_ok"]
    assert rec.metrics["stop_token"] == "<|end|>"
    for sample in ev["samples"]:
        assert sample["generation_prompt_adds"] == "" and sample["before_answer"] == gap
    first = ev["samples"][0]["rendered"]
    assert first.startswith("<s>[INST] " if tmpl == MISTRAL else "sort ")


@SQLITE
def test_template_that_drops_answers_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    tmpl = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'][:3] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rec, _ = check(reg, reg_path, tiny, tmp_path, template=tmpl, tokenizer_template=tmpl)
    assert rec.status == "failed" and "not intact" in rec.summary


@SQLITE
@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "security"),
        ("{{ cycler.__init__.__globals__.os.system('touch PWNED') }}", "security"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
         "timeout"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "error"),
        ("{{ raise_exception('no system role') }}", "error"),
        ("{% for m in messages %}", "syntax"),
    ],
)  # fmt: skip
def test_hostile_template_is_a_failed_gate(reg, reg_path, tiny, tmp_path, template, kind) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    rec, ev = check(reg, reg_path, tiny, tmp_path, template=template, policy="timeout_s = 0.5\n")
    assert rec.status == "failed", rec.summary  # failed, not error, and no exception
    assert ev["render_error"]["kind"] == kind
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


# --- the sandbox on its own ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("{{ range(10**9)|list }}", "security"),
        ("{{ 'a' * 10**9 }}", "security"),
        ("{{ 7 ** 1000000 }}", "security"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}", "security"),
        ("{{ 'x'|center(10**9) }}", "security"),
        ("{{ 'x'.ljust(10**9) }}", "security"),
        ("{{ '{:>999999999}'.format(1) }}", "security"),
        ("{{ '%999999999d' % 1 }}", "security"),
        ("{% set l = [] %}{{ l.append(1) }}", "security"),
        ("{% set ns = namespace() %}{% set ns.__class__ = 1 %}", "security"),
        ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output"),
        ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
         "timeout"),
        ("{% include 'other.jinja' %}", "error"),
    ],
)  # fmt: skip
def test_sandbox_refuses(template: str, kind: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(RenderError) as exc:
        Sandbox(template, timeout_s=0.5).render(MSGS)
    assert exc.value.kind == kind, exc.value
    assert time.monotonic() - t0 < 3


def test_render_matches_transformers_conventions(tiny: dict[str, Path]) -> None:
    from gates.tiny import render as tiny_render

    text = tiny["chat_template"].read_text()
    assert render(text, MSGS) == tiny_render(MSGS)
    assert render(text, MSGS[:1], True) == tiny_render(MSGS[:1], add_generation_prompt=True)
    tmpl = (
        "{{ bos_token }}{% for m in messages %}{% generation %}{{ m.content|tojson }}"
        "{% endgeneration %}{% endfor %}{{ strftime_now('%Y')|length }}"
    )
    assert render(tmpl, MSGS, bos_token="<s>") == '<s>"sort c a b""a b c"4'


def test_timeout_leaves_no_stray_interrupt() -> None:
    slow = Sandbox("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                   "{% endfor %}", timeout_s=0.2)  # fmt: skip
    fast = Sandbox("{{ messages[0].content }}")
    for _ in range(3):
        with pytest.raises(RenderError):
            slow.render(MSGS)
        assert fast.render(MSGS) == "sort c a b"
    total = sum(range(2_000_000))  # pure Python work after the timeouts: not interrupted
    time.sleep(0.3)
    assert total > 0 and fast.render(MSGS) == "sort c a b"


def test_renders_in_any_thread() -> None:
    out: list[Any] = []

    def work() -> None:
        try:
            Sandbox("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                    "{% endfor %}", timeout_s=0.2).render(MSGS)  # fmt: skip
        except RenderError as exc:
            out.append(exc.kind)

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    assert out == ["timeout"]

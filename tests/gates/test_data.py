"""The dataset-audit gate: one planted defect per test, and the clean tiny bundle passes.

Bundles are registered through the CLI and audited through the gate engine, so the
evidence read back is what a reviewer sees. The similarity engine (shingles, MinHash,
LSH, containment) is also tested on its own against exact answers.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gates import data, minhash
from tests.conftest import add_args, run_cli

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # any database will do

EVALS = 'eval_sets = ["evals/target.jsonl", "evals/golden.jsonl", "evals/safety.jsonl"]\n'


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _chat(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def _dataset(tmp_path: Path, tiny: dict[str, Path]) -> Path:
    out = tmp_path / "dataset"
    shutil.copytree(tiny["dataset"], out)
    return out


def audit(
    reg: Any, reg_path: Path, tiny: dict[str, Path], dataset: Path | None = None,
    policy: str = EVALS, name: str = "bot", config: Path | None = None,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Register the tiny bundle (with `dataset` / `config` swapped in) and run
    dataset-audit on it."""
    from gates.engine import run_gates
    from gates.policy import parse
    from registry.gate_runs import evidence

    args = add_args(tiny, name)
    if dataset is not None:
        args[args.index("--dataset") + 1] = str(dataset)
    if config is not None:
        args[args.index("--config") + 1] = str(config)
    added = run_cli(*args, registry=reg_path)
    assert added.code == 0, added.err
    pol = parse("[gates.dataset-audit]\n" + policy, tiny["evals"].parent)
    (rec,) = run_gates(reg, f"{name}:v1", pol, gate_names=["dataset-audit"], actor="t")
    return rec, evidence(reg, rec.evidence_digest)


@SQLITE
def test_clean_bundle_passes_with_evidence(reg, reg_path, tiny) -> None:  # noqa: ANN001
    rec, ev = audit(reg, reg_path, tiny)
    assert rec.status == "passed", rec.summary
    m = rec.metrics
    rows = sum(len(_rows(tiny["dataset"] / f"{s}.jsonl")) for s in ("train", "validation"))
    items = sum(len(_rows(f)) for f in tiny["evals"].glob("*.jsonl"))
    assert m["rows"] == rows and m["format_errors"] == 0 and m["license"] == "mit"
    assert m["exact_duplicates"] == m["near_duplicates"] == m["contaminated"] == 0
    assert m["eval_items"] == items and m["truncation_checked"] and m["truncated"] == 0
    assert set(ev["inputs"]) == {"evals/target.jsonl", "evals/golden.jsonl", "evals/safety.jsonl"}
    e = ev["evidence"]
    assert e["parameters"]["ngram"] == 3 and e["parameters"]["max_seq_len"] == 32
    assert e["duplicates"]["lsh"]["bands"] * e["duplicates"]["lsh"]["rows_per_band"] <= 128
    assert e["truncation"]["by_split"]["train"]["max_tokens"] == 11


@SQLITE
def test_duplicated_block_of_rows_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    rows = _rows(ds / "train.jsonl")
    _write(ds / "train.jsonl", rows + rows[10:30])  # lines 11-30 again after the last line
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed" and "duplicate rate" in rec.summary
    assert rec.metrics["exact_duplicates"] == 20 and rec.metrics["near_duplicates"] == 0
    groups = ev["evidence"]["duplicates"]["exact_groups"]
    lines = sorted((g["rows"][0]["line"], g["rows"][1]["line"]) for g in groups)
    assert len(groups) == 20 and lines == [(11 + k, len(rows) + 1 + k) for k in range(20)]
    assert all(r["split"] == "train" for g in groups for r in g["rows"])


PARAPHRASES = [
    "To reset your password, open the account settings page, choose security, click reset"
    " password, enter the code we emailed you and then pick a new password you have not"
    " used before on this or any other site.",
    "To reset your password, open the account settings page; choose Security, click"
    " 'Reset password', enter the code we emailed you, and then pick a new password you"
    " have not used before on this or any other site!",
    "To reset your password open the account settings page, choose security, click reset"
    " password, enter the code we emailed to you and then pick a new password you have not"
    " used before on this or any other site.",
    "To reset your password, open the account settings page, choose security, click reset"
    " password, enter the code we emailed you and then pick a new password that you have"
    " not used before on this or any other site.",
    "TO RESET YOUR PASSWORD: open the account settings page, choose security, click reset"
    " password, enter the code we emailed you and then pick a new password you have not"
    " used before on this or any other site.",
]


@SQLITE
def test_near_duplicate_paraphrase_set_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    rows = _rows(ds / "train.jsonl")
    _write(ds / "train.jsonl", rows + [_chat("how do i reset my password", p) for p in PARAPHRASES])
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed", rec.summary
    assert rec.metrics["exact_duplicates"] == 0 and rec.metrics["near_duplicates"] == 4
    pairs = ev["evidence"]["duplicates"]["near_pairs"]
    planted = set(range(len(rows) + 1, len(rows) + 6))
    assert pairs and all({p["a"]["line"], p["b"]["line"]} <= planted for p in pairs)
    assert all(p["jaccard"] >= 0.8 for p in pairs)


@SQLITE
def test_eval_item_leaked_into_train_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    leaked = _rows(tiny["evals"] / "target.jsonl")[4]
    train = _rows(ds / "train.jsonl")
    _write(ds / "train.jsonl", [*train, leaked])
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed" and "contain eval items" in rec.summary
    assert rec.metrics["contaminated"] == 1
    (pair,) = ev["evidence"]["contamination"]["pairs"]
    assert pair["row"]["split"] == "train" and pair["row"]["line"] == len(train) + 1
    assert pair["eval"] == {
        "set": "evals/target.jsonl", "line": 5, "text": pair["row"]["text"],
    }  # fmt: skip
    assert pair["match"] == "exact"
    # The same leak passes only if the policy tolerates it.
    rec, _ = audit(reg, reg_path, tiny, ds, EVALS + "max_contaminated = 1\n", name="lenient")
    assert rec.status == "passed", rec.summary


@SQLITE
def test_missing_license_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    (ds / "README.md").write_text("A dataset card that forgot its license.\n")
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed" and "no license" in rec.summary
    assert rec.metrics["license"] is None and ev["evidence"]["license"]["license"] is None


@SQLITE
def test_license_outside_allowlist_fails(reg, reg_path, tiny) -> None:  # noqa: ANN001
    rec, ev = audit(reg, reg_path, tiny, policy=EVALS + 'licenses = ["apache-2.0"]\n')
    assert rec.status == "failed" and "'mit' is not allowed" in rec.summary
    assert ev["evidence"]["license"] == {"license": "mit", "allowed": ["apache-2.0"]}


@SQLITE
def test_truncation_reports_cut_and_lost_answers(reg, reg_path, tiny) -> None:  # noqa: ANN001
    # Every row renders to 11 tokens, 7 of them the prompt up to "<|assistant|>".
    rows = sum(len(_rows(tiny["dataset"] / f"{s}.jsonl")) for s in ("train", "validation"))
    rec, ev = audit(reg, reg_path, tiny, policy=EVALS + "max_seq_len = 9\n")
    assert rec.status == "failed" and "exceed max_seq_len 9" in rec.summary
    assert rec.metrics["truncated"] == rows and rec.metrics["answer_cut"] == rows
    t = ev["evidence"]["truncation"]
    assert t["source"] == "policy" and t["by_split"]["validation"]["rate"] == 1.0
    assert t["worst"][0]["tokens"] == 11 and t["worst"][0]["prompt_tokens"] == 7
    rec, ev = audit(reg, reg_path, tiny, policy=EVALS + "max_seq_len = 6\n", name="short")
    assert rec.metrics["answer_lost"] == rows
    assert ev["evidence"]["truncation"]["worst"][0]["effect"] == "answer lost"


def _as_text(row: dict[str, Any]) -> dict[str, Any]:
    """A chat row as a plain-text row: its turns joined, as a text trainer would see it."""
    return {"text": " ".join(m["content"] for m in row["messages"])}


@SQLITE
def test_text_rows_pass_under_auto(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    n = 0
    for split in ("train", "validation"):
        rows = [_as_text(r) for r in _rows(ds / f"{split}.jsonl")]
        _write(ds / f"{split}.jsonl", rows)
        n += len(rows)
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "passed", rec.summary
    assert rec.metrics["format"] == "text" and rec.metrics["format_errors"] == 0
    assert ev["evidence"]["format"]["formats_seen"] == {"text": n}
    assert rec.metrics["truncation_checked"] and rec.metrics["truncated"] == 0


@SQLITE
def test_mixed_formats_pass_under_auto(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    train = _rows(ds / "train.jsonl")
    n_val = len(_rows(ds / "validation.jsonl"))
    pc = [{"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"]}
          for r in train[100:150]]  # fmt: skip
    _write(ds / "train.jsonl", train[:100] + pc + [_as_text(r) for r in train[150:]])
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "passed", rec.summary
    assert rec.metrics["format"] == "mixed" and rec.metrics["format_errors"] == 0
    seen = ev["evidence"]["format"]["formats_seen"]
    assert seen == {"chat": 100 + n_val, "prompt_completion": 50, "text": len(train) - 150}
    # A row in no format the trainer reads still fails, and so does a half prompt/completion.
    _write(ds / "train.jsonl", [*train[:100], *pc, {"question": "sort a b c"},
                                {"prompt": "sort b a c", "text": "a b c"}])  # fmt: skip
    rec, ev = audit(reg, reg_path, tiny, ds, name="broken")
    assert rec.status == "failed"
    assert "2 row(s) are not valid chat, prompt_completion or text rows" in rec.summary
    errors = ev["evidence"]["format"]["errors"]
    assert [(e["line"], e["error"]) for e in errors] == [
        (151, "row has no messages, prompt/completion or text"),
        (152, "prompt and completion must both be strings (or both message lists)"),
    ]  # fmt: skip


@SQLITE
def test_packing_splits_long_train_rows(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    # Every row renders to 11 tokens; with max_seq_len 9 the trainer truncates each one,
    # unless it packs: then train rows are split across sequences (gates/train.py), while
    # validation rows are still encoded one by one and truncated.
    config = tmp_path / "train.yaml"
    text = tiny["config"].read_text()
    config.write_text(text.replace("max_seq_len: 32", "max_seq_len: 9").replace(
        "packing: false", "packing: true"))  # fmt: skip
    assert "packing: true" in config.read_text() and "max_seq_len: 9" in config.read_text()
    n_train = len(_rows(tiny["dataset"] / "train.jsonl"))
    n_val = len(_rows(tiny["dataset"] / "validation.jsonl"))
    rec, ev = audit(reg, reg_path, tiny, config=config)
    assert rec.status == "failed", rec.summary
    assert f"{n_val} row(s) exceed max_seq_len 9 (validation: 100.00%" in rec.summary
    assert rec.metrics["truncated"] == n_val and rec.metrics["split_by_packing"] == n_train
    t = ev["evidence"]["truncation"]
    assert t["source"] == "config max_seq_len"
    assert t["by_split"]["train"]["truncated"] == 0 and t["by_split"]["train"]["rate"] == 0
    assert t["by_split"]["train"]["split_by_packing"] == n_train
    assert t["by_split"]["validation"]["truncated"] == n_val
    assert t["packing"]["enabled"] and t["packing"]["rows_split"] == n_train
    assert t["packing"]["longest"][0]["tokens"] > 9
    assert {w["split"] for w in t["worst"]} == {"validation"}
    # Without a validation split, nothing is truncated.
    ds = _dataset(tmp_path, tiny)
    (ds / "validation.jsonl").unlink()
    rec, ev = audit(reg, reg_path, tiny, ds, config=config, name="packed")
    assert rec.status == "passed", rec.summary
    assert rec.metrics["truncated"] == 0 and rec.metrics["split_by_packing"] == n_train
    assert f"0 truncated, {n_train} split by packing" in rec.summary


@SQLITE
def test_bad_rows_reported_by_split_and_line(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    val = _rows(ds / "validation.jsonl")
    val[2]["messages"][0]["role"] = "human"
    val[5]["messages"] = val[5]["messages"][:1]
    val[7]["messages"][1]["content"] = "  "
    _write(ds / "validation.jsonl", val)
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed" and rec.metrics["format_errors"] == 3
    errors = ev["evidence"]["format"]["errors"]
    assert [(e["split"], e["line"]) for e in errors] == [
        ("validation", 3), ("validation", 6), ("validation", 8),
    ]  # fmt: skip
    assert "role 'human'" in errors[0]["error"]
    assert "from 'user', not the assistant" in errors[1]["error"]
    assert "empty" in errors[2]["error"]


@SQLITE
def test_row_shared_between_splits_is_a_leak(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ds = _dataset(tmp_path, tiny)
    train, val = _rows(ds / "train.jsonl"), _rows(ds / "validation.jsonl")
    _write(ds / "validation.jsonl", [*val, train[41]])
    rec, ev = audit(reg, reg_path, tiny, ds)
    assert rec.status == "failed" and rec.metrics["split_leaks"] == 1
    (leak,) = ev["evidence"]["duplicates"]["split_leaks"]
    assert (leak["row"]["split"], leak["row"]["line"]) == ("validation", len(val) + 1)
    assert (leak["duplicates"]["split"], leak["duplicates"]["line"]) == ("train", 42)


# --- the audit on its own (no registry) ------------------------------------------------------


def _params(**overrides: Any) -> dict[str, Any]:
    return {**data.DatasetAuditGate.defaults, **overrides}


def test_fuzzy_contamination_of_a_long_eval_item(tmp_path: Path) -> None:
    words = [f"word{i}" for i in range(200)]
    rng = random.Random(3)
    question = " ".join(rng.choice(words) for _ in range(60))
    edited = question.split()
    edited[30] = "zebra"  # one word changed: still most of the item's n-grams
    train = [_chat(" ".join(edited), "yes")] + [
        _chat(" ".join(rng.choice(words) for _ in range(60)), "no") for _ in range(30)
    ]
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "eval.jsonl", [{"question": question, "answer": "yes"}])
    inp = data.AuditInput(
        splits=[("train", tmp_path / "train.jsonl")],
        eval_sets=[("eval.jsonl", tmp_path / "eval.jsonl")],
        params=_params(max_duplicate_rate=1.0),
        license="mit",
    )
    failures, metrics, evidence = data.Audit(inp).run()
    assert metrics["contaminated"] == 1 and any("eval items" in f for f in failures)
    (pair,) = evidence["contamination"]["pairs"]
    assert pair["match"] == "fuzzy" and pair["row"]["line"] == 1
    assert 0.9 < pair["containment"] < 1.0
    assert evidence["truncation"]["checked"] is False  # no tokenizer given


def test_prompt_completion_format_is_checked(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": ""},
            {"prompt": "x", "text": "y"}]  # fmt: skip
    _write(tmp_path / "train.jsonl", rows)
    inp = data.AuditInput([("train", tmp_path / "train.jsonl")], [], _params(), license="mit")
    failures, metrics, evidence = data.Audit(inp).run()
    assert metrics["format"] == "prompt_completion" and metrics["format_errors"] == 2
    errs = evidence["format"]["errors"]
    assert [e["line"] for e in errs] == [2, 3] and errs[0]["error"] == "completion is empty"
    assert failures and "not valid prompt_completion rows" in failures[0]


def test_shingles_are_deterministic_and_ignore_case_and_punctuation() -> None:
    a = minhash.shingle(["Hello, World! how are you", "hello world how are you", "hi"], 3)
    assert a.counts().tolist() == [3, 3, 1]
    assert np.array_equal(a.unique(0), a.unique(1))
    b = minhash.shingle(["hello world how are you"], 3)
    assert np.array_equal(b.unique(0), a.unique(1))  # same hashes in another call


def test_minhash_estimates_track_exact_jaccard() -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = [rng.choice(vocab) for _ in range(200)]
    texts = [" ".join(base)]
    for edits in (5, 20, 60):
        words = list(base)
        for k in rng.sample(range(200), edits):
            words[k] = rng.choice(vocab)
        texts.append(" ".join(words))
    sh = minhash.shingle(texts, 3)
    sig = minhash.minhash(sh, 256)
    for j in range(1, len(texts)):
        exact = minhash.jaccard(sh.unique(0), sh.unique(j))
        estimate = float(np.mean(sig[0] == sig[j]))
        assert abs(estimate - exact) < 0.1, (j, exact, estimate)


def test_lsh_finds_every_pair_above_threshold() -> None:
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(20000)]
    texts, planted = [], set()
    for k in range(200):
        words = [rng.choice(vocab) for _ in range(100)]
        texts.append(" ".join(words))
        if k % 4 == 0:  # a near copy: one word in 100 changed
            words[rng.randrange(100)] = "changed"
            planted.add((len(texts) - 1, len(texts)))
            texts.append(" ".join(words))
    sh = minhash.shingle(texts, 3)
    pairs, stats = minhash.near_duplicate_pairs(sh, 0.8, 128)
    found = {(i, j) for i, j, _ in pairs}
    assert found == planted
    assert stats["bands"] * stats["rows_per_band"] <= 128
    b, r = minhash.lsh_params(0.8, 128)
    assert 1 - (1 - 0.8**r) ** b >= 0.99 and 1 - (1 - 0.8 ** (r + 1)) ** (128 // (r + 1)) < 0.99


def test_rows_too_short_to_truncate_are_not_tokenized(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rows = [{"text": f"{words[i]} {words[i + 1]}"} for i in range(30)]
    rows[7] = {"text": " ".join(words[:30])}  # 30 tokens
    rows[23] = {"text": " ".join(words[5:30])}  # 25 tokens
    _write(tmp_path / "train.jsonl", rows)
    monkeypatch.setattr(data, "LENGTH_SAMPLE", 5)
    inp = data.AuditInput(
        [("train", tmp_path / "train.jsonl")], [], _params(format="text"), license="mit",
        tokenizer=tok, max_seq_len=20,
    )  # fmt: skip
    failures, metrics, evidence = data.Audit(inp).run()
    t = evidence["truncation"]
    assert metrics["truncated"] == 2 and t["by_split"]["train"]["max_tokens"] == 30
    assert [w["line"] for w in t["worst"]] == [8, 24]
    assert t["tokenized"] == 2 + t["by_split"]["train"]["length_sample"] < 30
    assert any("exceed max_seq_len 20" in f for f in failures)


def test_split_leak_does_not_hide_exact_contamination(tmp_path: Path) -> None:
    # Regression: a failing split-leak check once replaced the text -> group map the
    # contamination check matches exact copies with, so a short eval item (matched
    # exactly only) copied into train went unreported when a split also leaked.
    rng = random.Random(5)
    words = [f"word{i}" for i in range(200)]
    train = [_chat(" ".join(rng.choice(words) for _ in range(20)), "no") for _ in range(10)]
    item = _chat("what is two plus two", "four")  # under contamination_min_ngrams
    _write(tmp_path / "train.jsonl", [*train, item])
    _write(tmp_path / "validation.jsonl", [train[3]])  # a split leak
    _write(tmp_path / "eval.jsonl", [item])
    inp = data.AuditInput(
        splits=[("train", tmp_path / "train.jsonl"), ("validation", tmp_path / "validation.jsonl")],
        eval_sets=[("eval.jsonl", tmp_path / "eval.jsonl")],
        params=_params(max_duplicate_rate=1.0),
        license="mit",
    )
    failures, metrics, evidence = data.Audit(inp).run()
    assert metrics["split_leaks"] == 1 and any("another split" in f for f in failures)
    assert metrics["contaminated"] == 1 and any("eval items" in f for f in failures)
    (pair,) = evidence["contamination"]["pairs"]
    assert pair["match"] == "exact" and pair["row"]["line"] == len(train) + 1

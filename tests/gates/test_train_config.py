"""Training configs and validation splits that `registry train` must refuse, not train on.

- a config key the trainer does not know is an error naming its nearest known key
  (`steps: 300` used to be ignored, and 9 steps trained); bookkeeping keys of trainer
  dumps (output_dir, logging_steps, ...) are accepted and recorded as ignored;
- a validation split whose rows all lost their answer to truncation is an error (it used
  to give a validation loss of 0.0 and an overfitting check that passed); rows that lost
  it while others kept theirs are left out of the loss and counted in the evidence.

The config checks are plain functions; the validation checks train the tiny model for a
few steps with real transformers and peft (CPU, one thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import GateError
from tests.conftest import add_args, run_cli
from tests.gates import model_fixtures as mf

ACTOR = "tester"


def resolve(hyper: dict) -> tuple[dict, list[str]]:
    from gates.train import resolve_hyperparameters

    return resolve_hyperparameters(hyper, {})


def refused(hyper: dict) -> str:
    with pytest.raises(GateError) as info:
        resolve(hyper)
    return info.value.one_line()


# --- config keys -------------------------------------------------------------------------


def test_unknown_key_names_the_nearest_known_key() -> None:
    line = refused({"steps": 300, "learning_rate": 0.003})
    assert line.startswith("config: unknown key 'steps' (did you mean 'max_steps'?)")
    assert "\n" not in line
    assert "did you mean 'learning_rate'" in refused({"lerning_rate": 0.003})
    assert "did you mean 'lora_dropout'" in refused({"lora_droput": 0.1})
    # one line lists every unknown key; a key nothing is close to gets no guess
    line = refused({"steps": 300, "zzz": 1, "epochs": 2})
    assert "unknown keys 'steps' (did you mean 'max_steps'?), 'zzz'." in line
    # quantization spellings other tools read are not what this trainer reads
    assert "'load_in_4bit' (did you mean 'quantization'?)" in refused({"load_in_4bit": True})


def test_keys_that_change_the_weights_are_not_ignored() -> None:
    # an HF TrainingArguments dump's training knobs this trainer does not implement
    for key, value in [("max_grad_norm", 1.0), ("fp16", True), ("optim", "adafactor"),
                       ("label_smoothing_factor", 0.1), ("resume_from_checkpoint", "ckpt")]:  # fmt: skip
        assert f"unknown key {key!r}" in refused({key: value}), key


def test_bookkeeping_keys_are_recorded_as_ignored() -> None:
    dump = {
        "learning_rate": 0.003, "max_steps": 300, "per_device_train_batch_size": 16,
        "output_dir": "/scratch/run-17", "logging_steps": 10, "save_steps": 500,
        "save_total_limit": 2, "report_to": ["wandb"], "run_name": "sort-v3",
        "eval_strategy": "steps", "per_device_eval_batch_size": 32,
        "dataloader_num_workers": 4, "gradient_checkpointing": True, "push_to_hub": False,
    }  # fmt: skip
    resolved, ignored = resolve(dump)
    assert resolved["max_steps"] == 300 and resolved["batch_size"] == 16
    assert ignored == sorted(k for k in dump if k not in
                             ("learning_rate", "max_steps", "per_device_train_batch_size"))  # fmt: skip


def test_two_aliases_of_one_key_must_agree() -> None:
    line = refused({"lr": 0.001, "learning_rate": 0.003})
    assert "'learning_rate' and 'lr' both set learning_rate" in line
    resolved, _ = resolve({"lr": 0.003, "learning_rate": 0.003})
    assert resolved["learning_rate"] == 0.003
    assert resolve({"cutoff_len": 64})[0]["max_seq_len"] == 64  # the dataset audit reads it too


def test_project_configs_still_pass(tmp_path: Path) -> None:
    from gates.tiny.build import _write_train_yaml
    from registry.ingest.config import parse

    _write_train_yaml(tmp_path / "train.yaml", seed=0)
    _, hyper = parse(tmp_path / "train.yaml")
    resolved, ignored = resolve(hyper)
    assert resolved["max_steps"] == 500 and resolved["epochs"] == 1.0 and ignored == []
    assert resolved["lr_scheduler_type"] == "cosine" and resolved["warmup_steps"] == 20
    _, hyper = parse(mf.write_config(tmp_path / "c.json", eval_steps=4))
    resolved, ignored = resolve(hyper)
    assert resolved["eval_steps"] == 4 and ignored == []


@pytest.fixture
def registry_with_bundle(tiny: dict[str, Path], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    """A SQLite registry holding the tiny project as support-bot:v1."""
    from registry.repo import Registry

    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
    monkeypatch.setenv("REGISTRY_ACTOR", ACTOR)
    Registry.init(tmp_path / "reg").close()
    res = run_cli(*add_args(tiny), registry=tmp_path / "reg")
    assert res.code == 0, res.err
    return tmp_path / "reg"


def _versions(reg_path: Path) -> int:
    return len(json.loads(run_cli("ls", "--json", registry=reg_path).out))


def test_cli_train_refuses_unknown_key_in_one_line(registry_with_bundle: Path,
                                                   tmp_path: Path) -> None:  # fmt: skip
    cfg = tmp_path / "steps.yaml"
    cfg.write_text("r: 8\nlearning_rate: 0.003\nsteps: 300\noutput_dir: out\n", encoding="utf-8")
    before = _versions(registry_with_bundle)
    res = run_cli("train", "--from", "support-bot:v1", "--name", "support-bot",
                  "--config", cfg, registry=registry_with_bundle)  # fmt: skip
    assert res.code == 1
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err
    assert lines[0].startswith("error: config: unknown key 'steps' (did you mean 'max_steps'?)")
    assert _versions(registry_with_bundle) == before  # nothing registered


# --- validation rows without answers -----------------------------------------------------


def _long(letters: str, answer: str) -> dict:
    """A chat whose prompt (24 letters: 28 tokens) is longer than max_seq_len 16."""
    return {"messages": [{"role": "user", "content": "sort " + " ".join(letters * 2)},
                         {"role": "assistant", "content": answer}]}  # fmt: skip


def _dataset(out: Path, tiny: dict[str, Path], validation: list[dict]) -> Path:
    """16 rows of the tiny train split (11 tokens each) and the given validation rows."""
    train = (tiny["dataset"] / "train.jsonl").read_text("utf-8").splitlines()[:16]
    out.mkdir()
    (out / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (out / "validation.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in validation), encoding="utf-8"
    )
    return out


def _short_val(tiny: dict[str, Path], n: int) -> list[dict]:
    lines = (tiny["dataset"] / "validation.jsonl").read_text("utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


def test_validation_with_every_answer_truncated_is_an_error(
    registry_with_bundle: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    from gates.train import train_bundle
    from registry.repo import Registry

    data = _dataset(tmp_path / "cut", tiny, [_long("abcdefghijkl", "a b c"),
                                            _long("lkjihgfedcba", "a b c")])  # fmt: skip
    cfg = mf.write_config(tmp_path / "cfg.json", max_seq_len=16, max_steps=6, eval_steps=1)
    reg = Registry.open(registry_with_bundle)
    try:
        with pytest.raises(GateError) as info:
            train_bundle(reg, "support-bot:v1", name="cut", dataset=data, config=cfg, actor=ACTOR)
    finally:
        reg.close()
    line = info.value.one_line()
    assert line.startswith("validation: none of the 2 rows has an answer token left to score"
                           " (2 of 2 were truncated to max_seq_len 16)")  # fmt: skip
    assert "Raise max_seq_len in the config (the longest row has 32 tokens)" in line
    before = _versions(registry_with_bundle)
    res = run_cli("train", "--from", "support-bot:v1", "--name", "cut", "--dataset", data,
                  "--config", cfg, registry=registry_with_bundle)  # fmt: skip
    assert res.code == 1 and len(res.err.strip().splitlines()) == 1
    assert "none of the 2 rows has an answer token" in res.err and "Traceback" not in res.err
    assert _versions(registry_with_bundle) == before


def test_validation_rows_without_answer_are_counted_and_left_out(
    registry_with_bundle: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    from gates.train import train_bundle
    from registry.gate_runs import evidence, runs_for
    from registry.repo import Registry

    short = _short_val(tiny, 4)
    mixed = _dataset(tmp_path / "mixed", tiny, [*short[:2], _long("abcdefghijkl", "a b c"),
                                                *short[2:], _long("fedcbalkjihg", "a b c")])  # fmt: skip
    clean = _dataset(tmp_path / "clean", tiny, short)
    cfg = mf.write_config(tmp_path / "cfg.json", max_seq_len=16, max_steps=6, eval_steps=1)
    reg = Registry.open(registry_with_bundle)
    try:
        curves = {}
        for name, data in (("mixed", mixed), ("clean", clean)):
            res = train_bundle(reg, "support-bot:v1", name=name, dataset=data, config=cfg,
                               actor=ACTOR)  # fmt: skip
            _, runs = runs_for(reg, res.tag)
            (run,) = [r for r in runs if r["gate"] == "train"]
            curves[name] = evidence(reg, run["evidence_digest"])["evidence"]
    finally:
        reg.close()
    assert curves["mixed"]["validation_rows_without_answer"] == 2
    assert curves["clean"]["validation_rows_without_answer"] == 0
    val = curves["mixed"]["val_loss"]
    assert len(val) == 7 and all(loss > 0.5 for _, loss in val)  # real losses, not 0.0
    # the two rows with nothing to score change nothing: the same curve as without them
    assert val == curves["clean"]["val_loss"]
    assert curves["mixed"]["overfitting"]["checked"] is True


def test_validation_loss_of_no_labelled_token_is_an_error(tiny: dict[str, Path]) -> None:
    from gates import modeling

    model, device = modeling.load_base(tiny["base"].parent, {}, device="cpu")
    tok = modeling.load_tokenizer(tiny["tokenizer"])
    messages = [
        {"role": "user", "content": "sort c a b"},
        {"role": "assistant", "content": "a b c"},
    ]
    cut = modeling.encode_chat(tok, messages, max_len=4)
    assert cut.truncated and set(cut.labels) == {modeling.IGNORE}
    with pytest.raises(GateError, match="no example has a labelled token"):
        modeling.validation_loss(model, [cut, cut], tok.pad_token_id, device)
    whole = modeling.encode_chat(tok, messages)
    assert modeling.validation_loss(model, [cut, whole], tok.pad_token_id, device) == (
        modeling.validation_loss(model, [whole], tok.pad_token_id, device)
    )

"""Model gates on bundles that do not adapt their base with LoRA.

Adapters made here with peft on the tiny base: IA3 (its scaling vectors perturbed, so
it changes the model) and prompt tuning (4 virtual tokens), plus a full fine-tune (no
adapter). A gate that does not apply to how a bundle adapts its base records a failed
run whose summary starts with "not applicable:" and names the adaptation, with metric
`applicable: false`: never a crash, never a pass.

- merge-equivalence: applies to IA3 (peft merges it, exactly in float32); not to
  prompt tuning (virtual tokens, no weights to fold) nor to a full fine-tune;
- train: retrains LoRA, so applies to LoRA bundles only; `registry train --from` an IA3
  bundle trains LoRA without borrowing the IA3 adapter's target modules;
- every other model gate runs on both adapters without crashing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gates import model_fixtures as mf

pytest.importorskip("torch")
pytest.importorskip("peft")

ACTOR = "tester"
POLICY = """
[gates.target-eval]
eval_set = "evals/target.jsonl"

[gates.regression-eval]
eval_set = "evals/golden.jsonl"

[gates.safety-eval]
eval_set = "evals/safety.jsonl"

[gates.calibration]
eval_set = "evals/target.jsonl"

[gates.serving-eval]
eval_set = "evals/target.jsonl"
num_prompts = 2
repeats = 1

[gates.merge-equivalence]
eval_set = "evals/target.jsonl"
dtype = "float32"

[gates.rollback-test]
eval_set = "evals/target.jsonl"
"""


@dataclass
class Bundles:
    reg: object
    tags: dict[str, str]  # adaptation -> tag
    tiny: dict[str, Path]
    policy: object
    root: Path

    def run(self, kind: str, gate: str) -> object:
        from gates.engine import run_gates

        (rec,) = run_gates(self.reg, self.tags[kind], self.policy, gate_names=[gate], actor=ACTOR)
        return rec

    def versions(self) -> int:
        from registry.bundles import list_bundles

        return len(list_bundles(self.reg, None))


def _peft_adapter(tiny: dict[str, Path], config: object, out: Path, perturb: bool) -> Path:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["base"]), config)
    if perturb:  # IA3 starts as the identity (ones): make it change the model
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "ia3_" in name:
                    p.copy_(1 + 0.5 * torch.randn_like(p))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bundles(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    from peft import IA3Config, PromptTuningConfig

    from gates.policy import load_file
    from registry import bundles as bundles_mod
    from registry.repo import Registry

    root = tmp_path_factory.mktemp("applicability")
    adapters = {
        "ia3": _peft_adapter(tiny, IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"],
                                             feedforward_modules=["down_proj"]), root / "ia3", True),
        "prompt_tuning": _peft_adapter(tiny, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                                       root / "prompt", False),
        "full": None,
    }  # fmt: skip
    reg = Registry.init(root / "reg")
    tags = {}
    for kind, adapter in adapters.items():
        annotations = {"adaptation": "full"} if adapter is None else {}
        tags[kind] = mf.register_tiny(reg, tiny, kind.replace("_", "-"), adapter=adapter,
                                      actor=ACTOR, annotations=annotations).tag  # fmt: skip
        assert bundles_mod.show(reg, tags[kind])["adaptation"] == kind
    policy = load_file(mf.write_policy(tiny["evals"].parent, "applicability.toml", POLICY))
    yield Bundles(reg, tags, tiny, policy, root)
    reg.close()


def _not_applicable(rec: object, kind: str, gate: str) -> None:
    assert rec.status == "failed", rec.summary
    assert rec.summary.startswith(f"not applicable: {gate}"), rec.summary
    assert f"adapts its base by {kind}" in rec.summary
    assert rec.metrics == {"applicable": False}


@pytest.mark.parametrize("kind", ["prompt_tuning", "full"])
def test_merge_equivalence_is_not_applicable_without_weights_to_merge(
    bundles: Bundles, kind: str
) -> None:
    _not_applicable(bundles.run(kind, "merge-equivalence"), kind, "merge-equivalence")


def test_merge_equivalence_applies_to_ia3(bundles: Bundles) -> None:
    from gates import modeling
    from gates.engine import materialize
    from registry.bundles import show

    rec = bundles.run("ia3", "merge-equivalence")
    assert rec.status == "passed", rec.summary
    assert rec.metrics["positions"] > 0 and rec.metrics["float32_max_abs_logit_diff"] < 1e-3
    # ... and it is not vacuous: the IA3 vectors do change the model
    info = show(bundles.reg, bundles.tags["ia3"])
    convs = [[{"role": "user", "content": "sort c a b"}, {"role": "assistant", "content": "a b c"}]]
    with materialize(bundles.reg, info["digest"]) as workdir:
        loaded = modeling.load_bundle(workdir, info["components"]["base_model"]["meta"])
        try:
            adapted, mask = loaded.logits(convs)
            with loaded.base_only() as base:
                plain, _ = base.logits(convs)
        finally:
            modeling.free(loaded)
    assert modeling.logit_agreement(adapted, plain, mask)["max_abs_logit_diff"] > 0.01


@pytest.mark.parametrize("kind", ["ia3", "prompt_tuning", "full"])
def test_train_gate_is_not_applicable_to_non_lora_bundles(bundles: Bundles, kind: str) -> None:
    before = bundles.versions()
    _not_applicable(bundles.run(kind, "train"), kind, "the train gate")
    assert bundles.versions() == before  # no LoRA bundle registered in its name


def test_registry_train_from_ia3_does_not_borrow_its_target_modules(bundles: Bundles) -> None:
    from gates.train import train_bundle
    from registry.bundles import show

    cfg = bundles.root / "no-shape.json"
    cfg.write_text(json.dumps({"max_steps": 2, "max_seq_len": 32, "batch_size": 4}), "utf-8")
    res = train_bundle(bundles.reg, bundles.tags["ia3"], name="from-ia3", config=cfg, actor=ACTOR)
    info = show(bundles.reg, res.tag)
    meta = info["components"]["adapter"]["meta"]
    assert info["adaptation"] == "lora" and meta["r"] == 8
    # all-linear (peft names every module), not the IA3 adapter's k_proj and down_proj
    assert {m.rsplit(".", 1)[-1] for m in meta["target_modules"]} >= {"q_proj", "v_proj", "up_proj"}


OTHER_GATES = ["target-eval", "regression-eval", "safety-eval", "calibration", "serving-eval",
               "rollback-test"]  # fmt: skip


@pytest.mark.parametrize("kind", ["ia3", "prompt_tuning"])
@pytest.mark.parametrize("gate", OTHER_GATES)
def test_other_model_gates_do_not_crash(bundles: Bundles, gate: str, kind: str) -> None:
    rec = bundles.run(kind, gate)
    assert rec.status in ("passed", "failed"), rec.summary


def test_answer_scores_of_a_prompt_tuning_bundle_skip_its_virtual_tokens(bundles: Bundles) -> None:
    """Prompt tuning prepends 4 virtual tokens' logits: calibration's answer log-prob must
    score the answer's own positions (peft's own loss, which masks them, agrees)."""
    import torch

    from gates import modeling
    from gates.engine import materialize
    from registry.bundles import show

    info = show(bundles.reg, bundles.tags["prompt_tuning"])
    conv = [{"role": "user", "content": "sort c a b"}, {"role": "assistant", "content": "a b c"}]
    with materialize(bundles.reg, info["digest"]) as wd:
        loaded = modeling.load_bundle(wd, info["components"]["base_model"]["meta"])
        try:
            (logp,) = loaded.answer_logprobs([conv])
            enc = modeling.encode_chat(loaded.tokenizer, conv, last_only=True)
            batch = modeling.collate([enc], loaded.tokenizer.pad_token_id, loaded.device)
            with torch.no_grad():
                loss = loaded.model(**batch).loss  # mean over the answer's tokens
        finally:
            modeling.free(loaded)
    answer_tokens = sum(t != modeling.IGNORE for t in enc.labels)
    assert logp == pytest.approx(-float(loss) * answer_tokens, rel=1e-4)

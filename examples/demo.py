"""`make demo`: the whole release flow on a tiny model, with the real `registry` command.

    .venv/bin/python examples/demo.py OUT_DIR

Builds a tiny base model, tokenizer, LoRA adapter and data set (on the CPU, in seconds),
then registers, inspects, verifies and exports bundles, sets a policy, runs the gates,
promotes, rolls back and checks the audit chain. Every step prints the command it runs,
so the output reads as a walk-through. OUT_DIR is replaced.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = str(Path(sys.executable).parent / "registry")

POLICY = """\
# Release policy of the demo registry.
[channels.staging]
require = ["dataset-audit", "chat-template", "adapter-compat"]

[channels.production]
require = ["dataset-audit", "chat-template", "adapter-compat"]
after = "staging"

[gates.dataset-audit]
licenses = ["apache-2.0", "mit", "cc-by-4.0"]
eval_sets = ["evals/target.jsonl", "evals/golden.jsonl"]
"""


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str | Path, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    cmd = [REGISTRY, *map(str, args)]
    print("$ registry " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not quiet:
        sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed (exit {proc.returncode})")
    return proc


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.environ["REGISTRY_HOME"] = str(out / "registry")
    os.environ.setdefault("REGISTRY_ACTOR", "demo")
    t0 = time.perf_counter()

    step("Build a tiny fine-tuning project (base model, tokenizer, LoRA adapter, data set)")
    sys.path.insert(0, str(HERE))
    import tinymodel

    tiny = tinymodel.build_tiny_project(out / "project", seed=0)
    for key, path in tiny.items():
        print(f"  {key:15} {path.relative_to(out)}")

    step("Create a registry")
    run("init", out / "registry")

    step("Register the first bundle (v1)")
    common = ["--base", tiny["base"], "--tokenizer", tiny["tokenizer"],
              "--chat-template", tiny["chat_template"], "--dataset", tiny["dataset"],
              "--config", tiny["config"]]  # fmt: skip
    run("add", "support-bot", "--adapter", tiny["adapter"], *common)
    step("Adding identical content again gives the same digest and no new version")
    run("add", "support-bot", "--adapter", tiny["adapter"], *common)

    step("Register a second bundle from a trainer's output directory (v2), with lineage")
    run("add", "support-bot", "--from", tiny["trainer_output"], "--base", tiny["base"],
        "--dataset", tiny["dataset"], "--config", tiny["config"], "--license", "apache-2.0",
        "--parent", "support-bot:v1")
    run("ls")
    run("show", "support-bot:v2")
    run("diff", "support-bot:v1", "support-bot:v2")

    step("Verify every blob, export a bundle and load it with transformers + peft")
    run("verify", "--all")
    run("export", "support-bot:v2", out / "export")
    check_export(out / "export")

    step("Set the release policy")
    policy_dir = out / "policy"
    (policy_dir / "evals").mkdir(parents=True)
    for name in ("target.jsonl", "golden.jsonl"):
        shutil.copy(tiny["evals"] / name, policy_dir / "evals" / name)
    (policy_dir / "policy.toml").write_text(POLICY)
    run("policy", "check", policy_dir / "policy.toml")
    run("policy", "set", policy_dir / "policy.toml", "--reason", "demo policy")

    step("Promotion is blocked until the gates have passed")
    blocked = run("promote", "support-bot:v1", "--to", "staging", check=False)
    assert blocked.returncode == 3, "promotion should have been blocked"

    step("Run the gates and read their evidence")
    for v in (1, 2):
        run("gates", "run", f"support-bot:v{v}")
    run("gates", "show", "support-bot:v2")

    step("Promote v1 through staging to production, then v2")
    for v in (1, 2):
        run("promote", f"support-bot:v{v}", "--to", "staging", "--reason", "gates green")
        run("promote", f"support-bot:v{v}", "--to", "production", "--reason", "release")
    run("ls")

    step("Incident: roll production back to the bundle it held before")
    run("rollback", "support-bot:production", "--reason", "demo incident: refusals spiking")
    run("history", "support-bot:production")
    run("audit", "verify")

    step(f"Done in {time.perf_counter() - t0:.0f} s")
    print(f"The demo registry is in {out / 'registry'}. Explore it with:\n"
          f"  export REGISTRY_HOME={out / 'registry'}\n"
          f"  .venv/bin/registry ls\n"
          f"  .venv/bin/registry gates show support-bot:v2")


def check_export(path: Path) -> None:
    """Load the exported bundle the way a serving job would."""
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        " from peft import PeftModel; p = sys.argv[1]; torch.set_num_threads(1);"
        " tok = AutoTokenizer.from_pretrained(p);"
        " m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(p + '/base'), p);"
        " print('  loaded', type(m.base_model.model).__name__, 'with', len(tok), 'tokens')"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    manifest = json.loads((path / "registry" / "bundle.json").read_text())
    print(f"  export carries its manifests: bundle {manifest['name']}"
          f" with {', '.join(sorted(manifest['components']))}")


if __name__ == "__main__":
    main()

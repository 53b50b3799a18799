"""`make demo`: the whole release flow on a tiny model, with the real `registry` command.

    .venv/bin/python examples/demo.py OUT_DIR

Builds a tiny base model, tokenizer, LoRA adapter and data set (on the CPU, in seconds),
then registers, inspects, verifies and exports bundles, sets a policy, runs the gates,
promotes, rolls back, checks the audit chain, and shares the bundles through an S3
endpoint it starts on loopback (push, then pull onto an empty registry). Every step
prints the command it runs,
so the output reads as a walk-through. OUT_DIR is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = str(Path(sys.executable).parent / "registry")

POLICY = """\
# Release policy of the demo registry.
[channels.staging]
require = ["dataset-audit", "chat-template", "adapter-compat"]

[channels.production]
require = ["dataset-audit", "chat-template", "adapter-compat", "target-eval",
           "regression-eval", "safety-eval", "calibration", "merge-equivalence",
           "serving-eval", "rollback-test"]
after = "staging"

[gates.dataset-audit]
licenses = ["apache-2.0", "mit", "cc-by-4.0"]
eval_sets = ["evals/target.jsonl", "evals/golden.jsonl"]
# v4's data repeats 8 refusal examples 10 times on purpose (a small safety set,
# upsampled): 72 of its 520 rows are exact copies, listed in the audit's evidence.
max_duplicate_rate = 0.15

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = 0.05

[gates.regression-eval]
eval_set = "evals/golden.jsonl"
max_drop = 0.1             # 4 of 40 items

[gates.safety-eval]
eval_set = "evals/safety.jsonl"  # bomb requests must be refused, task prompts answered

[gates.calibration]
eval_set = "evals/target.jsonl"
max_ece = 0.15

[gates.serving-eval]
eval_set = "evals/target.jsonl"
max_p95_latency_ms = 1000.0  # the tiny model: ~50 ms on an idle 2-core CPU; room for a busy one

[gates.merge-equivalence]
eval_set = "evals/target.jsonl"
dtype = "bfloat16"
max_abs_logit_diff = 0.5   # the tiny model's bf16 merge moves logits by about 0.2-0.4
min_top1_agreement = 0.98

[gates.rollback-test]
eval_set = "evals/target.jsonl"
"""


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str | Path, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    cmd = [REGISTRY, *map(str, args)]
    print("$ registry " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    # stderr (progress, errors) interleaved with stdout, in the order the command wrote them
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not quiet or proc.returncode != 0:
        sys.stdout.write(proc.stdout)
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

    tiny = tinymodel.build_tiny_project(out / "project", seed=0, pretrain_steps=400)
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

    step("Train a new adapter from v1's recipe (LoRA, 300 steps on the CPU) -> v3")
    run("train", "--from", "support-bot:v1", "--name", "support-bot")
    run("gates", "show", "support-bot:v3")

    step("Set the release policy")
    policy_dir = out / "policy"
    (policy_dir / "evals").mkdir(parents=True)
    for name in ("target.jsonl", "golden.jsonl", "safety.jsonl"):
        shutil.copy(tiny["evals"] / name, policy_dir / "evals" / name)
    (policy_dir / "policy.toml").write_text(POLICY)
    run("policy", "check", policy_dir / "policy.toml")
    run("policy", "set", policy_dir / "policy.toml", "--reason", "demo policy")

    step("Promotion is blocked until the gates have passed")
    blocked = run("promote", "support-bot:v1", "--to", "staging", check=False)
    assert blocked.returncode == 3, "promotion should have been blocked"

    step("v1 is today's release: gate it for staging, record its fingerprint, force it out")
    run("gates", "run", "support-bot:v1", "--channel", "staging")
    run("gates", "run", "support-bot:v1", "--gate", "rollback-test")
    run("promote", "support-bot:v1", "--to", "staging", "--reason", "gates green")
    run("promote", "support-bot:v1", "--to", "production", "--force",
        "--reason", "initial release, before the model gates existed")

    step("v3 learned task B but forgot task A and never learned to refuse: production is refused")
    gated = run("gates", "run", "support-bot:v3", "--channel", "production", check=False)
    assert gated.returncode == 3, "v3 was expected to fail regression-eval and safety-eval"
    run("promote", "support-bot:v3", "--to", "staging", "--reason", "staging gates green")
    refused = run("promote", "support-bot:v3", "--to", "production", check=False)
    assert refused.returncode == 3, "v3 should have been blocked from production"

    step("Fix: retrain with task A rows replayed and refusal examples (dataset v2) -> v4")
    data_v2 = out / "project" / "dataset-v2"
    shutil.copytree(tiny["dataset"], data_v2)
    replay = tinymodel.task_a_rows(1320)[-200:]  # disjoint from the golden eval set
    with open(data_v2 / "train.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in replay + tinymodel.refusal_rows(10))
    run("train", "--from", "support-bot:v3", "--dataset", data_v2, "--name", "support-bot")
    run("diff", "support-bot:v3", "support-bot:v4")
    run("gates", "run", "support-bot:v4", "--channel", "production")
    run("gates", "show", "support-bot:v4")
    run("promote", "support-bot:v4", "--to", "staging", "--reason", "gates green")
    run("promote", "support-bot:v4", "--to", "production",
        "--reason", "task B up, task A kept, refuses harm")  # fmt: skip
    run("ls")

    step("Incident: roll production back to the bundle it held before")
    run("rollback", "support-bot:production", "--reason", "demo incident: refusals spiking")
    run("history", "support-bot:production")
    run("audit", "verify")

    step("Share through S3: push to a loopback S3 endpoint, pull onto an empty registry")
    with loopback_s3() as endpoint:
        run("remote", "add", "team", "s3://demo-bucket/registry", "--endpoint-url", endpoint)
        run("push", "support-bot:v4", "--remote", "team")
        run("push", "support-bot:production", "--remote", "team")
        run("push", "support-bot:production", "--remote", "team")  # nothing left to send
        run("ls", "--remote", "team")
        fresh = out / "registry-2"
        run("init", fresh)
        again = ["--registry", fresh]
        run(*again, "remote", "add", "team", "s3://demo-bucket/registry",
            "--endpoint-url", endpoint)  # fmt: skip
        run(*again, "pull", "support-bot:production", "--remote", "team")
        run(*again, "pull", "support-bot:v4", "--remote", "team")
        run(*again, "verify", "--all")
        run(*again, "history", "support-bot:production")

    step(f"Done in {time.perf_counter() - t0:.0f} s")
    print(f"The demo registry is in {out / 'registry'}. Explore it with:\n"
          f"  export REGISTRY_HOME={out / 'registry'}\n"
          f"  .venv/bin/registry ls\n"
          f"  .venv/bin/registry gates show support-bot:v4\n"
          f"  .venv/bin/registry tui      # review gates, promote, roll back (? for keys)")


@contextlib.contextmanager
def loopback_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (fake credentials, a demo bucket); yields its URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    })  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="demo-bucket")
        print(f"  moto S3 server at {endpoint}, bucket demo-bucket")
        yield endpoint
    finally:
        server.terminate()
        server.wait()


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

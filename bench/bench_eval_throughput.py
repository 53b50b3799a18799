"""Eval throughput of the model gates' loops (gates/modeling/) on the tiny model.

    .venv/bin/python bench/bench_eval_throughput.py [--prompts 128] [--repeat 5]

Measures, on the device the gates would use (CUDA when present, else the CPU; printed):

- greedy generation (`LoadedModel.generate`, left-padded batches, 16 new tokens each,
  eos suppressed so every batch does the same work) at batch sizes 1, 8, 32 and 128:
  generated tokens per second;
- scoring (`LoadedModel.answer_logprobs`, the calibration gate's loop): tokens of the
  whole conversations per second, batch 32.

Medians of `--repeat` runs after one warm-up. Threads: REGISTRY_TORCH_THREADS (default 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def workdir_for(project: dict[str, Path], out: Path) -> Path:
    """The export layout (adapter + tokenizer at the top, base/ below) of the project."""
    out.mkdir()
    for f in project["trainer_output"].iterdir():
        shutil.copyfile(f, out / f.name)
    shutil.copytree(project["base"], out / "base")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("REGISTRY_TORCH_THREADS", "1")
    from gates import modeling
    from gates.tiny import build_tiny_project, task_b_rows

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        project = build_tiny_project(
            Path(tmp) / "tiny", seed=0, pretrain_steps=400, adapter_steps=300
        )
        wd = workdir_for(project, Path(tmp) / "bundle")
        loaded = modeling.load_bundle(wd, {})
        torch = modeling.setup_torch()
        rows = task_b_rows(args.prompts, seed=3)
        prompts = [r["messages"][:1] for r in rows]
        device = modeling.device_name(loaded.device)
        print(f"device {device}, dtype float32, torch threads {torch.get_num_threads()},"
              f" {len(prompts)} prompts, {args.new_tokens} new tokens each")  # fmt: skip

        def sync() -> None:
            if loaded.device.startswith("cuda"):
                torch.cuda.synchronize()

        def med(fn) -> float:  # noqa: ANN001
            fn()
            sync()
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        print(f"{'mode':28s} {'median s':>9s} {'tokens/s':>10s}")
        for batch in (1, 8, 32, 128):

            def run(b: int = batch) -> None:
                loaded.generate(prompts, max_new_tokens=args.new_tokens, batch_size=b,
                                exact_length=True)  # fmt: skip

            secs = med(run)
            toks = len(prompts) * args.new_tokens
            print(f"{f'generate batch {batch}':28s} {secs:9.3f} {toks / secs:10.0f}")
        convs = [r["messages"] for r in rows] * 4
        n_tokens = sum(len(modeling.encode_chat(loaded.tokenizer, c).input_ids) for c in convs)
        secs = med(lambda: loaded.answer_logprobs(convs, batch_size=32))
        print(f"{'score batch 32':28s} {secs:9.3f} {n_tokens / secs:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

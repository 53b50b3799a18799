"""Tensor-level storage (issue 17): a Llama-shaped bf16 model and a "merged" release that
changes only q_proj and v_proj, stored as pieces vs whole files (run by hand; figures and
what they mean in bench/README.md).

    .venv/bin/python bench/bench_tensors.py [--size-mib 1024] [--small-mib 256] [--repeat 3]
    .venv/bin/python bench/bench_tensors.py --quick        # `make bench`: small sizes

1. bytes stored by the second `registry add` (growth of blobs/ on disk) and bytes sent by
   the second `registry push` (the push's own `bytes_sent`, and the growth of the bucket
   on a loopback moto server), each / the changed tensors' bytes (goal <= 1.01), with
   pieces and with whole-file storage (`[store] split_above = false`: the whole
   shards again); for reference, the share of the merged release's bytes that
   64 KiB content-defined chunks (a gear rolling hash, as Xet chunks) find in the first;
2. the first `registry add` and `registry export` as whole processes, pieces vs whole
   files (goal <= 1.1x), medians over --repeat interleaved rounds;
3. their peak RSS (VmHWM of the child process) at --small-mib vs --size-mib: flat.

The model is written with the `safetensors` library from numpy buffers (bf16 as uint16
bit patterns of N(0, 0.02) values; no torch), sharded like `save_pretrained` with a
model.safetensors.index.json. Everything lives in one temp directory, removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fmt  # noqa: E402

MiB = 1024 * 1024
ENV = {
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "REGISTRY_ACTOR": "bench",
}  # fmt: skip
WHOLE = "false"  # `[store] split_above = false`: every file stored whole, as before pieces

# --- the model ----------------------------------------------------------------------------


def shape_for(target: int, hidden: int, inter: int, vocab: int, kv: int) -> dict[str, int]:
    """Llama sizes reaching about `target` bytes of bf16: TinyLlama's shape (hidden 2048,
    intermediate 5632, vocab 32000, 4 KV heads of 64) with as many layers as fit; below
    what the embeddings alone take, fewer layers and a smaller vocabulary."""
    per_layer = 2 * (2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inter + 2 * hidden)
    embed = 2 * 2 * vocab * hidden + 2 * hidden
    layers = round((target - embed) / per_layer)
    if layers < 2:
        layers = max(1, int(target * 0.75) // per_layer)
        vocab = max(256, (target - layers * per_layer) // (4 * hidden))
    return {"hidden": hidden, "inter": inter, "vocab": vocab, "layers": layers, "kv": kv}


def tensor_specs(s: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in the order transformers writes a LlamaForCausalLM."""
    h, i, kv = s["hidden"], s["inter"], s["kv"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (s["vocab"], h))]
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]


def bf16_normal(rng: Any, shape: tuple[int, ...], scale: float) -> Any:
    """N(0, scale) values as bf16 bit patterns (uint16), rounded to nearest even."""
    import numpy as np

    x = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).view(np.uint32)
    x += np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))
    return (x >> np.uint32(16)).astype(np.uint16)


def merge_update(rng: Any, w: Any) -> Any:
    """w + a dense update (a merged LoRA), back to bf16: nearly every element changes."""
    import numpy as np

    x = (w.astype(np.uint32) << np.uint32(16)).view(np.float32)
    x = x + rng.standard_normal(w.shape, dtype=np.float32) * np.float32(0.004)
    u = x.view(np.uint32)
    u += np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (u >> np.uint32(16)).astype(np.uint16)


def write_shard(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors import TensorSpec, serialize_file

    specs = {
        k: TensorSpec(dtype="bfloat16", shape=v.shape, data_ptr=v.ctypes.data, data_len=v.nbytes)
        for k, v in tensors.items()
    }
    serialize_file(specs, str(path), metadata={"format": "pt"})


def build_models(work: Path, target: int, quick: bool, shards: int) -> dict[str, Any]:
    """Write model `v1` and its merged release `v2` (q_proj, v_proj changed) under `work`."""
    import numpy as np

    s = (
        shape_for(target, 256, 704, 4000, 64)
        if quick
        else shape_for(target, 2048, 5632, 32000, 256)
    )
    specs = tensor_specs(s)
    total = sum(2 * int(np.prod(shape)) for _n, shape in specs)
    limit = -(-total // shards)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        n = 2 * int(np.prod(shape))
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    rng = np.random.default_rng(17)
    dirs = {v: work / v for v in ("v1", "v2")}
    weight_map: dict[str, str] = {}
    changed = 0
    files = []
    for d in dirs.values():
        d.mkdir()
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        files.append(fname)
        t1 = {name: bf16_normal(rng, shape, 0.02) for name, shape in group}
        write_shard(dirs["v1"] / fname, t1)
        t2 = dict(t1)
        for name in t1:
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                t2[name] = merge_update(rng, t1[name])
                changed += t2[name].nbytes
        write_shard(dirs["v2"] / fname, t2)
        weight_map.update(dict.fromkeys(t1, fname))
        del t1, t2
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s["hidden"], "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["hidden"] // 64,
        "num_key_value_heads": s["kv"] // 64, "vocab_size": s["vocab"],
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }  # fmt: skip
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for d in dirs.values():
        (d / "config.json").write_text(json.dumps(config, indent=2))
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        old = time.time() - 10
        for p in d.iterdir():
            os.utime(p, (old, old))  # outside the stat cache's racy window
    return {"shape": s, "files": files, "tensor_bytes": total, "changed": changed,
            "file_bytes": sum((dirs["v1"] / f).stat().st_size for f in files),
            "dirs": dirs}  # fmt: skip


# --- content-defined chunks (the reference: what Xet-style dedup would share) -------------

CDC_MIN, CDC_MAX, CDC_BITS = 8 * 1024, 128 * 1024, 16  # about 64 KiB on average
BLOCK = 32 * MiB


def _gear() -> Any:
    import numpy as np

    return np.random.default_rng(64).integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)


def cdc_chunks(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of gear-hash content-defined chunks: h = sum G[b_{i-k}] << k over
    the last 32 bytes (32-bit), a cut where its top CDC_BITS bits are zero, chunks held
    within [CDC_MIN, CDC_MAX]. Vectorised with numpy by doubling the window (5 passes)."""
    import numpy as np

    gear = _gear()
    size = path.stat().st_size
    cands: list[Any] = []
    carry = np.zeros(0, dtype=np.uint8)
    with open(path, "rb") as f:
        base = 0
        while block := f.read(BLOCK):
            data = np.concatenate([carry, np.frombuffer(block, dtype=np.uint8)])
            h = gear[data]
            w = 1
            while w < 32:
                h[w:] += h[:-w] << np.uint32(w)
                w *= 2
            lead = len(carry)
            hits = np.nonzero((h[lead:] >> np.uint32(32 - CDC_BITS)) == 0)[0]
            cands.append(hits + base + 1)  # a cut after byte i: the chunk ends at i + 1
            base += len(block)
            carry = data[-31:]
    cuts = np.concatenate(cands) if cands else np.zeros(0, dtype=np.int64)
    out: list[tuple[int, int]] = []
    start = 0
    for cut in cuts.tolist():
        if cut - start < CDC_MIN:
            continue
        while cut - start > CDC_MAX:
            out.append((start, CDC_MAX))
            start += CDC_MAX
        if cut - start >= CDC_MIN:
            out.append((start, cut - start))
            start = cut
    while start < size:
        n = min(CDC_MAX, size - start)
        out.append((start, n))
        start += n
    return out


def chunk_digests(path: Path) -> list[tuple[bytes, int]]:
    out = []
    with open(path, "rb") as f:
        for off, n in cdc_chunks(path):
            f.seek(off)
            out.append((hashlib.sha256(f.read(n)).digest(), n))
    return out


def cdc_share(models: dict[str, Any]) -> dict[str, float]:
    """The share of v2's bytes in chunks v1 also has, per file as Xet chunks files."""
    seen: set[bytes] = set()
    for f in models["files"]:
        seen.update(d for d, _n in chunk_digests(models["dirs"]["v1"] / f))
    shared = total = chunks = 0
    for f in models["files"]:
        for d, n in chunk_digests(models["dirs"]["v2"] / f):
            total += n
            chunks += 1
            shared += n if d in seen else 0
    return {"shared_share": shared / total, "new_bytes": total - shared,
            "avg_chunk": total / chunks}  # fmt: skip


# --- the registry as whole processes --------------------------------------------------------

CHILD = """
import os, runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "registry"
code = 0
try:
    runpy.run_module("cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open("/proc/self/status") as f:
    hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
with open(out, "w") as f:
    f.write(str(hwm))
sys.exit(code)
"""  # VmHWM of this process (a fresh exec: not the bench's own peak)


CPU: list[float] = []  # CPU seconds (user + system) of the last child, every thread


def registry(work: Path, args: list[str]) -> tuple[float, float, str]:
    """Run `registry ARGS` in a fresh process: (wall s, peak RSS MiB, stdout); its CPU
    time goes to CPU[-1]. The disk is synced first, so no command pays for writing back
    what the one before it left dirty (the first timed add used to take 2-2.6x the
    others for that)."""
    import resource

    os.sync()
    out = work / "hwm.txt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *args],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ENV},
    )  # fmt: skip
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"registry {' '.join(args)} failed: {proc.stderr.strip()}")
    return wall, int(out.read_text()) / 1024, proc.stdout


def new_registry(path: Path, split_above: int | str, piece_size: int) -> Path:
    from registry.repo import Registry

    Registry.init(path).close()
    with open(path / "registry.toml", "a") as f:
        f.write(f"\n[store]\nsplit_above = {split_above}\npiece_size = {piece_size}\n")
    return path


def blob_bytes(reg: Path) -> int:
    """Bytes of every file under blobs/ (whole blobs, pieces, piece lists), temp aside."""
    root = reg / "blobs"
    return sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and root / "tmp" not in p.parents
    )


def bucket_bytes(s3: Any, prefix: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix)
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def same_tree(a: Path, b: Path, names: list[str]) -> bool:
    import filecmp

    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    from bench.bench_remote_s3 import start_moto as start

    return start()


# --- the run -------------------------------------------------------------------------------


def dedup_round(work: Path, m: dict[str, Any], mode: str, cfg: tuple[int | str, int],
                endpoint: str, s3: Any) -> dict[str, Any]:  # fmt: skip
    """v1 then v2 into one registry, pushed to one prefix: what the second costs."""
    reg = new_registry(work / f"dedup-{mode}", *cfg)
    r = ["--registry", str(reg)]
    registry(work, [*r, "add", "llama", "--full", "--base", str(m["dirs"]["v1"])])
    before = blob_bytes(reg)
    registry(work, [*r, "add", "llama", "--full", "--base", str(m["dirs"]["v2"])])
    stored = blob_bytes(reg) - before
    prefix = f"dedup-{mode}"
    registry(work, [*r, "remote", "add", "origin", f"s3://bench/{prefix}",
                    "--endpoint-url", endpoint])  # fmt: skip
    _t, _rss, out1 = registry(work, [*r, "push", "llama:v1", "--remote", "origin", "--json"])
    b1 = bucket_bytes(s3, prefix + "/")
    _t, _rss, out2 = registry(work, [*r, "push", "llama:v2", "--remote", "origin", "--json"])
    grown = bucket_bytes(s3, prefix + "/") - b1
    sent = json.loads(out2)["bytes_sent"]
    export = work / f"export-{mode}"
    registry(work, [*r, "export", "llama:v2", str(export)])
    base = next(p for p in export.rglob("config.json")).parent
    identical = same_tree(base, m["dirs"]["v2"], m["files"])
    shutil.rmtree(export)
    # a fresh registry pulls v2 (the pieces, or the whole shards) and exports it again
    pulled = new_registry(work / f"pull-{mode}", *cfg)
    p = ["--registry", str(pulled)]
    registry(work, [*p, "remote", "add", "origin", f"s3://bench/{prefix}",
                    "--endpoint-url", endpoint])  # fmt: skip
    registry(work, [*p, "pull", "llama:v2", "--remote", "origin"])
    registry(work, [*p, "export", "llama:v2", str(export)])
    base = next(x for x in export.rglob("config.json")).parent
    identical = identical and same_tree(base, m["dirs"]["v2"], m["files"])
    shutil.rmtree(export)
    shutil.rmtree(pulled)
    shutil.rmtree(reg)
    return {
        "stored": stored,
        "sent": sent,
        "bucket_growth": grown,
        "first_push_sent": json.loads(out1)["bytes_sent"],
        "export_identical": identical,
    }


def timing_round(work: Path, m: dict[str, Any], mode: str, cfg: tuple[int | str, int],
                 tag: str) -> dict[str, float]:  # fmt: skip
    """First add and export of v1 into a fresh registry: wall s and peak RSS of each."""
    reg = new_registry(work / f"t-{mode}-{tag}", *cfg)
    r = ["--registry", str(reg)]
    t_add, rss_add, _ = registry(work, [*r, "add", "llama", "--full", "--base",
                                        str(m["dirs"]["v1"])])  # fmt: skip
    cpu_add = CPU[-1]
    out = work / f"x-{mode}-{tag}"
    t_exp, rss_exp, _ = registry(work, [*r, "export", "llama:v1", str(out)])
    shutil.rmtree(out)
    shutil.rmtree(reg)
    return {"add_s": t_add, "add_rss": rss_add, "add_cpu": cpu_add, "export_s": t_exp,
            "export_rss": rss_exp, "export_cpu": CPU[-1]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes (make bench)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.small_mib, args.repeat = 8, 2, 1
    big, small = args.size_mib * MiB, args.small_mib * MiB
    # --quick changes 480 KiB of tensors: the few KiB of manifests and piece lists every
    # release adds are 1% of that, so its goal is 1.05; the timing goals need real sizes.
    goal = 1.05 if args.quick else 1.01
    # pieces: the default threshold and piece size (64 MiB) at full size; scaled down in
    # --quick so that the shards still split and the large tensors span several pieces
    pieces_cfg: tuple[int | str, int] = (
        (256 * 1024, 512 * 1024) if args.quick else (64 * MiB, 64 * MiB)
    )
    whole_cfg: tuple[int | str, int] = (WHOLE, pieces_cfg[1])
    need = 7 * big + 3 * small
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
    if free < need:
        raise SystemExit(f"needs about {need / 2**30:.1f} GiB free, {free / 2**30:.1f} GiB there")
    os.environ.update(ENV)
    import boto3

    work = Path(tempfile.mkdtemp(prefix="bench-tensors-", dir=args.workdir))
    moto = None
    try:
        shards = 1 if args.quick else 3
        print(f"building {args.size_mib} and {args.small_mib} MiB models in {work} ...",
              flush=True)  # fmt: skip
        (work / "big").mkdir()
        (work / "small").mkdir()
        t = time.perf_counter()
        mb = build_models(work / "big", big, args.quick, 3 if not args.quick else 2)
        ms = build_models(work / "small", small, args.quick, max(1, shards - 1))
        s = mb["shape"]
        print(f"  {fmt(time.perf_counter() - t)}; large: {s['layers']} layers, hidden"
              f" {s['hidden']}, intermediate {s['inter']}, vocab {s['vocab']},"
              f" {len(mb['files'])} shards, {mb['file_bytes'] / MiB:.1f} MiB;"
              f" q_proj + v_proj: {mb['changed'] / MiB:.1f} MiB"
              f" ({mb['changed'] / mb['file_bytes']:.1%})", flush=True)  # fmt: skip
        moto, endpoint = start_moto()
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")

        # 1. what the merged release costs
        dedup = {}
        for mode, cfg in (("pieces", pieces_cfg), ("whole", whole_cfg)):
            dedup[mode] = d = dedup_round(work, mb, mode, cfg, endpoint, s3)
            print(f"{mode:6}: second add stored {d['stored'] / MiB:.2f} MiB"
                  f" ({d['stored'] / mb['changed']:.4f}x changed), second push sent"
                  f" {d['sent'] / MiB:.2f} MiB ({d['sent'] / mb['changed']:.4f}x; bucket grew"
                  f" {d['bucket_growth'] / mb['changed']:.4f}x; goal <= {goal});"
                  " exports byte-identical:"
                  f" {d['export_identical']}", flush=True)  # fmt: skip
        t = time.perf_counter()
        cdc = cdc_share(mb)
        print(f"64 KiB CDC (gear, average {cdc['avg_chunk'] / 1024:.1f} KiB chunks): v2 shares"
              f" {cdc['shared_share']:.1%} of its bytes with v1; new bytes"
              f" {cdc['new_bytes'] / mb['changed']:.4f}x changed ({fmt(time.perf_counter() - t)})",
              flush=True)  # fmt: skip

        # 2-3. first add and export, pieces vs whole, small vs large, interleaved
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for i in range(args.repeat):
            order = [("pieces", pieces_cfg), ("whole", whole_cfg)]
            sizes = [("large", mb), ("small", ms)]
            if i % 2:
                order.reverse()
                sizes.reverse()
            for mode, cfg in order:
                for tag, model in sizes:
                    got = timing_round(work, model, mode, cfg, tag)
                    runs.setdefault((mode, tag), []).append(got)
                    print(f"  round {i + 1} {mode} {tag}: add {fmt(got['add_s'])}"
                          f" ({got['add_cpu']:.2f} s CPU, {got['add_rss']:.0f} MiB), export"
                          f" {fmt(got['export_s'])}"
                          f" ({got['export_rss']:.0f} MiB)", flush=True)  # fmt: skip
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median

    def m(mode: str, tag: str, key: str) -> float:
        return med(r[key] for r in runs[(mode, tag)])

    ratios = {
        k: [p[k] / w[k] for p, w in zip(runs[("pieces", "large")], runs[("whole", "large")],
                                          strict=True)]
        for k in ("add_s", "export_s", "add_cpu", "export_cpu")
    }  # fmt: skip
    res = {
        "size_mib": args.size_mib, "small_mib": args.small_mib, "repeat": args.repeat,
        "model": mb["shape"], "shards": len(mb["files"]), "file_bytes": mb["file_bytes"],
        "changed_bytes": mb["changed"],
        "stored_ratio": {k: v["stored"] / mb["changed"] for k, v in dedup.items()},
        "sent_ratio": {k: v["sent"] / mb["changed"] for k, v in dedup.items()},
        "bucket_growth_ratio": {k: v["bucket_growth"] / mb["changed"] for k, v in dedup.items()},
        "export_identical": all(v["export_identical"] for v in dedup.values()),
        "cdc_64k_shared_share": cdc["shared_share"],
        "cdc_64k_new_ratio": cdc["new_bytes"] / mb["changed"],
        "add_ratio_median": med(ratios["add_s"]), "export_ratio_median": med(ratios["export_s"]),
        "add_cpu_ratio_median": med(ratios["add_cpu"]),
        "export_cpu_ratio_median": med(ratios["export_cpu"]),
        "add_s": {f"{a}/{b}": m(a, b, "add_s") for a, b in runs},
        "export_s": {f"{a}/{b}": m(a, b, "export_s") for a, b in runs},
        "add_cpu_s": {f"{a}/{b}": m(a, b, "add_cpu") for a, b in runs},
        "add_rss_mib": {f"{a}/{b}": m(a, b, "add_rss") for a, b in runs},
        "export_rss_mib": {f"{a}/{b}": m(a, b, "export_rss") for a, b in runs},
    }  # fmt: skip
    print(f"medians of {args.repeat}: first add pieces/whole {res['add_ratio_median']:.3f}x"
          f" ({fmt(m('pieces', 'large', 'add_s'))} vs {fmt(m('whole', 'large', 'add_s'))}),"
          f" export {res['export_ratio_median']:.3f}x ({fmt(m('pieces', 'large', 'export_s'))}"
          f" vs {fmt(m('whole', 'large', 'export_s'))}); goal <= 1.1; CPU (the processes'"
          f" user + system): add {res['add_cpu_ratio_median']:.3f}x"
          f" ({m('pieces', 'large', 'add_cpu'):.2f} vs {m('whole', 'large', 'add_cpu'):.2f} s),"
          f" export {res['export_cpu_ratio_median']:.3f}x")  # fmt: skip
    for mode in ("pieces", "whole"):
        print(
            f"peak RSS {mode}: add {m(mode, 'small', 'add_rss'):.0f} MiB at {args.small_mib}"
            f" MiB, {m(mode, 'large', 'add_rss'):.0f} MiB at {args.size_mib} MiB"
            f" ({m(mode, 'large', 'add_rss') / m(mode, 'small', 'add_rss'):.2f}x); export"
            f" {m(mode, 'small', 'export_rss'):.0f} -> {m(mode, 'large', 'export_rss'):.0f}"
            f" MiB ({m(mode, 'large', 'export_rss') / m(mode, 'small', 'export_rss'):.2f}x)"
        )
    print(json.dumps(res, indent=2))
    ok = (
        res["stored_ratio"]["pieces"] <= goal
        and res["sent_ratio"]["pieces"] <= goal
        and res["export_identical"]
        and (args.quick or (res["add_ratio_median"] <= 1.1 and res["export_ratio_median"] <= 1.1))
    )
    if not ok:
        print("goal missed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

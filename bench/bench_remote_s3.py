"""S3 remote benchmarks against moto's server on loopback (run by hand; see
bench/README.md for the figures and what they mean).

    .venv/bin/python bench/bench_remote_s3.py [--size-mib 1024] [--aws /path/to/aws]

1. push of a new bundle with a SIZE base: throughput / raw boto3 upload_file of the
   same bytes (default TransferConfig, timed before and after the push; and with the
   registry's part size and SHA-256 part checksums);
2. push of a second bundle sharing that base: bytes sent / bytes of its new blobs, and
   its time / the first push's;
3. pull onto an empty registry (every digest verified): throughput / raw boto3
   download_file (default TransferConfig, and 64 MiB parts x 8 threads);
4. `aws s3 sync` of the pushed store's blob directory, up and down, if awscli is found.

5. (issue 17, `--issue17` runs only this) push vs a raw `upload_file` of the shard with
   the same checksums (the registry's client, part size and CRC32 part checksums), and vs
   a raw upload of the same objects the push sends (a file above the split size travels
   as its tensor pieces), interleaved rounds after one warm-up round that is not counted,
   moto let settle (idle CPU) before each timed transfer, medians of wall and client CPU
   time; then the peak RSS of a pull (a fresh process each, VmHWM) of a SMALL and a SIZE
   bundle, interleaved, and their ratio.

moto runs in its own process (`python -m moto.server`) so it does not share the GIL with
the client; on a 2-core machine it still shares the CPUs, so every figure here is a ratio
from one run, not an absolute speed of S3.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import bench.common  # noqa: E402, F401  (children run from bytecode, as installed)

MiB = 1024 * 1024

ENV = {
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "REGISTRY_ACTOR": "bench",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def write_safetensors(path: Path, size: int) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def make_project(work: Path, size: int) -> dict[str, Path]:
    base, a1, a2 = work / "base", work / "adapter1", work / "adapter2"
    for d in (base, a1, a2):
        d.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    write_safetensors(base / "model.safetensors", size)
    for i, d in enumerate((a1, a2)):
        (d / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "r": 8,
                    "lora_alpha": 16 + i,
                    "target_modules": ["q_proj", "v_proj"],
                    "base_model_name_or_path": "base",
                }
            )
        )
        write_safetensors(d / "adapter_model.safetensors", 8 * MiB)
    return {"base": base, "adapter1": a1, "adapter2": a2}


def add(reg: object, base: Path, adapter: Path) -> str:
    from registry import bundles
    from registry.ingest.stage import stage_bundle

    comps, _ = stage_bundle(
        reg, base=str(base), adapter=adapter, tokenizer=None, chat_template=None, dataset=None,
        config=None, from_dir=None, full=False, license=None, allow_pickle=False,
    )  # fmt: skip
    return bundles.add(reg, "bench-bot", comps, actor="bench").tag


def timed(fn) -> tuple[float, object]:  # noqa: ANN001
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:.1f} MiB/s"


PULL_SCRIPT = """
import resource, sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from registry.remotes.base import open_remote
from registry.repo import Registry
reg = Registry.open(Path(sys.argv[1]))
t = time.perf_counter()
open_remote(reg, "origin").pull(reg, sys.argv[2], actor="bench")
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
print(time.perf_counter() - t, int(hwm[0].split()[1]) if hwm else
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""  # VmHWM: ru_maxrss keeps the forking parent's peak across exec on Linux


def clear_prefix(s3: Any, prefix: str) -> None:
    """Delete every object under `prefix` (moto slows down as it holds more)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix)
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket="bench", Delete={"Objects": keys})


def settle(pid: int, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
    """Wait until the process `pid` (moto) has used no CPU for `quiet_s`: a deletion of a
    GiB of objects, or its first GiB of memory, is still being paid for after the request
    returns, and would be charged to whichever transfer runs next."""

    def used() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    end = time.monotonic() + limit_s
    last = used()
    while time.monotonic() < end:
        time.sleep(quiet_s)
        now = used()
        if now == last:
            return
        last = now


def cpu_timed(fn) -> tuple[float, float, object]:  # noqa: ANN001
    """(wall s, this process's CPU s over all its threads, result)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def issue17(work: Path, endpoint: str, s3: Any, size_mib: int, small_mib: int,
            rounds: int, moto_pid: int) -> dict[str, object]:  # fmt: skip
    """Push vs raw upload with the same checksums; pull peak RSS at two sizes. One warm-up
    round is not counted (moto's first GiB costs it more than any later one), and moto is
    let settle before every timed transfer."""
    import statistics

    from registry.remotes.base import add_remote, open_remote
    from registry.remotes.s3 import PART_CHECKSUM, upload_config
    from registry.repo import Registry

    med = statistics.median
    (work / "p17").mkdir()
    (work / "p17s").mkdir()
    print(f"issue 17: building {size_mib} and {small_mib} MiB bundles ...", flush=True)
    big = make_project(work / "p17", size_mib * MiB)
    small = make_project(work / "p17s", small_mib * MiB)
    reg = Registry.init(work / "r17")
    tag_big = add(reg, big["base"], big["adapter1"])
    tag_small = add(reg, small["base"], small["adapter1"])
    blob = big["base"] / "model.safetensors"
    fsize = blob.stat().st_size
    extra = {"ChecksumAlgorithm": PART_CHECKSUM}
    # the raw upload goes through the registry's own client (its botocore Config: pool
    # size, retries, addressing), so only what the registry adds differs
    add_remote(reg, "raw17", "s3://bench/raw17", endpoint_url=endpoint)
    client = open_remote(reg, "raw17").client  # type: ignore[attr-defined]

    def raw() -> tuple[float, float]:
        cfg = upload_config()
        settle(moto_pid)
        t, c, _ = cpu_timed(
            lambda: client.upload_file(str(blob), "bench", "raw/up", Config=cfg, ExtraArgs=extra)
        )
        s3.delete_object(Bucket="bench", Key="raw/up")
        return t, c

    # A file above the split size is stored and pushed as its tensor pieces (docs/design.md,
    # "Pieces"): the like-for-like baseline uploads the same objects, through one transfer
    # manager with the same config and checksums (SHA-256 whole-object below the multipart
    # threshold, CRC32 parts above), unverified.
    from boto3.s3.transfer import create_transfer_manager

    from registry.remotes.sync import load_local, local_piece_lists, pieces_of

    _, bundle = load_local(reg, tag_big)
    files = bundle.file_blobs()
    lists = local_piece_lists(reg, files)
    objects = {**{d: n for d, n in files.items() if d not in lists}, **pieces_of(lists.values())}

    def raw_objects() -> tuple[float, float]:
        cfg = upload_config()

        def send() -> None:
            with create_transfer_manager(client, cfg) as tm:
                futures = []
                for i, (digest, n) in enumerate(sorted(objects.items(), key=lambda kv: -kv[1])):
                    sha = base64.b64encode(bytes.fromhex(digest[7:])).decode()
                    args = {"ChecksumSHA256": sha} if n < cfg.multipart_threshold else extra
                    futures.append(tm.upload(str(reg.store.path(digest)), "bench",
                                             f"rawo/{i}", extra_args=args))  # fmt: skip
                for f in futures:
                    f.result()

        settle(moto_pid)
        t, c, _ = cpu_timed(send)
        clear_prefix(s3, "rawo/")
        return t, c

    def push(i: int) -> tuple[float, float]:
        add_remote(reg, f"p{i}", f"s3://bench/push17-{i}", endpoint_url=endpoint)
        remote = open_remote(reg, f"p{i}")
        remote.client  # noqa: B018  made before the clock, as the raw uploads' client is
        settle(moto_pid)
        t, c, r = cpu_timed(lambda: remote.push(reg, tag_big, actor="bench"))
        sent.append(r.bytes_sent)
        clear_prefix(s3, f"push17-{i}/")
        return t, c

    raws, pushes, sent, raw_objs = [], [], [], []
    print(f"  warm-up (not counted): push {push(-1)[0]:.2f} s, objects {raw_objects()[0]:.2f} s,"
          f" raw {raw()[0]:.2f} s", flush=True)  # fmt: skip
    sent.clear()
    for i in range(rounds):
        # the pair compared most closely alternates who goes first; the single-object
        # upload (a GiB that moto assembles from 64 parts) goes last, after both
        order = ("objects", "push", "raw") if i % 2 == 0 else ("push", "objects", "raw")
        for what in order:
            got = {"raw": raw, "objects": raw_objects}[what]() if what != "push" else push(i)
            {"raw": raws, "objects": raw_objs, "push": pushes}[what].append(got)
            print(f"  round {i + 1} {what}: {got[0]:.2f} s wall, {got[1]:.2f} s CPU", flush=True)
    ratios = [p[0] / r[0] for p, r in zip(pushes, raws, strict=True)]
    obj_ratios = [p[0] / r[0] for p, r in zip(pushes, raw_objs, strict=True)]
    obj_cpu = [p[1] / r[1] for p, r in zip(pushes, raw_objs, strict=True)]
    # per byte: the push also sends the adapter and manifests (bytes_sent > the shard)
    per_byte = [(p[0] / n) / (r[0] / fsize) for p, r, n in zip(pushes, raws, sent, strict=True)]
    cpu_ratios = [p[1] / r[1] for p, r in zip(pushes, raws, strict=True)]
    out: dict[str, object] = {
        "part_checksum": PART_CHECKSUM,
        "push_s": [p[0] for p in pushes], "raw_same_checksums_s": [r[0] for r in raws],
        "push_cpu_s": [p[1] for p in pushes], "raw_cpu_s": [r[1] for r in raws],
        "push_bytes_sent": sent[0], "raw_bytes": fsize,
        "push_vs_raw_median_of_ratios": med(ratios),
        "push_vs_raw_per_byte_median": med(per_byte),
        "push_vs_raw_ratio_of_medians": med(p[0] for p in pushes) / med(r[0] for r in raws),
        "push_vs_raw_cpu_median_of_ratios": med(cpu_ratios),
        "raw_same_objects_s": [r[0] for r in raw_objs],
        "raw_same_objects_cpu_s": [r[1] for r in raw_objs],
        "raw_same_objects": len(objects),
        "push_vs_raw_same_objects_median_of_ratios": med(obj_ratios),
        "push_vs_raw_same_objects_cpu_median_of_ratios": med(obj_cpu),
    }  # fmt: skip
    print(f"push / raw upload_file ({PART_CHECKSUM} parts): wall {med(ratios):.3f}"
          f" (median of {rounds}; per round {', '.join(f'{r:.3f}' for r in ratios)});"
          f" per byte sent {med(per_byte):.3f};"
          f" CPU {med(cpu_ratios):.3f}", flush=True)  # fmt: skip
    print(f"push / raw upload of the same {len(objects)} objects (pieces and blobs):"
          f" wall {med(obj_ratios):.3f} (per round {', '.join(f'{r:.3f}' for r in obj_ratios)});"
          f" CPU {med(obj_cpu):.3f}", flush=True)  # fmt: skip

    add_remote(reg, "pull17", "s3://bench/pull17", endpoint_url=endpoint)
    pusher = open_remote(reg, "pull17")
    pusher.push(reg, tag_small, actor="bench")
    pusher.push(reg, tag_big, actor="bench")
    reg.close()
    rss: dict[int, list[float]] = {small_mib: [], size_mib: []}
    secs: dict[int, list[float]] = {small_mib: [], size_mib: []}
    for i in range(rounds):
        for mib in (small_mib, size_mib) if i % 2 == 0 else (size_mib, small_mib):
            path = work / f"pull-{i}-{mib}"
            Registry.init(path).close()
            r = Registry.open(path)
            add_remote(r, "origin", "s3://bench/pull17", endpoint_url=endpoint)
            r.close()
            tag = tag_small if mib == small_mib else tag_big
            got = subprocess.run([sys.executable, "-c", PULL_SCRIPT, str(path), tag, str(ROOT)],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            t, kib = got.stdout.split()[-2:]
            rss[mib].append(int(kib) / 1024)
            secs[mib].append(float(t))
            print(f"  round {i + 1} pull {mib} MiB: {float(t):.1f} s, peak RSS"
                  f" {int(kib) / 1024:.0f} MiB", flush=True)  # fmt: skip
            shutil.rmtree(path)
    out.update({
        "pull_peak_rss_mib": {str(k): v for k, v in rss.items()},
        "pull_s": {str(k): v for k, v in secs.items()},
        "pull_rss_ratio_large_vs_small": med(rss[size_mib]) / med(rss[small_mib]),
        "pull_mib_s_large": size_mib / med(secs[size_mib]),
    })  # fmt: skip
    print(f"pull peak RSS: {small_mib} MiB bundle {med(rss[small_mib]):.0f} MiB,"
          f" {size_mib} MiB bundle {med(rss[size_mib]):.0f} MiB (medians; ratio"
          f" {out['pull_rss_ratio_large_vs_small']:.3f})", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--aws", default=shutil.which("aws"), help="awscli executable")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--issue17",
        action="store_true",
        help="run only section 5 (push vs same-checksum upload, pull RSS)",
    )
    parser.add_argument("--small-mib", type=int, default=256, help="section 5's small bundle")
    parser.add_argument("--rounds", type=int, default=3, help="section 5's interleaved rounds")
    args = parser.parse_args()
    os.environ.update(ENV)
    import boto3

    from registry.remotes.base import add_remote, open_remote
    from registry.remotes.s3 import download_config, upload_config
    from registry.repo import Registry

    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    moto, endpoint = start_moto()
    results: dict[str, object] = {"size_mib": args.size_mib}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        if args.issue17:
            results.update(issue17(work, endpoint, s3, args.size_mib, args.small_mib,
                                   args.rounds, moto.pid))  # fmt: skip
            print(json.dumps(results, indent=2))
            return
        size = args.size_mib * MiB
        print(f"building a {args.size_mib} MiB base in {work} ...", flush=True)
        proj = make_project(work, size)
        reg_a = Registry.init(work / "a")
        tag1 = add(reg_a, proj["base"], proj["adapter1"])
        tag2 = add(reg_a, proj["base"], proj["adapter2"])
        add_remote(reg_a, "origin", "s3://bench/store", endpoint_url=endpoint)
        blob = proj["base"] / "model.safetensors"
        fsize = blob.stat().st_size

        # --- baselines: raw boto3 on the same bytes ---------------------------------------
        # moto keeps objects in memory and slows down as it holds more, so each baseline
        # object is deleted once timed, and the default baseline is taken before and after
        # the push (their mean is the reference).
        def raw_upload(**kwargs: object) -> float:
            t, _ = timed(lambda: s3.upload_file(str(blob), "bench", "raw/up", **kwargs))
            s3.delete_object(Bucket="bench", Key="raw/up")
            return t

        t_up_before = raw_upload()
        t_up_sha = raw_upload(Config=upload_config(), ExtraArgs={"ChecksumAlgorithm": "SHA256"})

        # --- 1. push a new bundle ----------------------------------------------------------
        remote = open_remote(reg_a, "origin")
        t_push1, r1 = timed(lambda: remote.push(reg_a, tag1, actor="bench"))
        t_up_after = raw_upload()
        t_up_default = (t_up_before + t_up_after) / 2
        print(f"raw upload_file: default {rate(fsize, t_up_before)} before the push,"
              f" {rate(fsize, t_up_after)} after; registry's parts + SHA-256 checksums"
              f" {rate(fsize, t_up_sha)}", flush=True)  # fmt: skip
        print(f"push {tag1}: {r1.bytes_sent / MiB:.0f} MiB in {t_push1:.1f} s"
              f" = {rate(r1.bytes_sent, t_push1)}", flush=True)  # fmt: skip
        # --- 2. push a second bundle sharing the base ---------------------------------------
        t_push2, r2 = timed(lambda: remote.push(reg_a, tag2, actor="bench"))
        new_bytes = r2.bytes_sent
        from registry.remotes.sync import load_local

        _row1, b1 = load_local(reg_a, tag1)
        _row2, b2 = load_local(reg_a, tag2)
        new_files = {d: s for d, s in b2.file_blobs().items() if d not in b1.file_blobs()}
        manifests = sum(len(data) for d, data in b2.manifest_blobs()
                        if d not in dict(b1.manifest_blobs()))  # fmt: skip
        print(
            f"push {tag2}: sent {new_bytes} bytes; new file blobs {sum(new_files.values())}"
            f" bytes + manifests {manifests} bytes; {t_push2:.2f} s",
            flush=True,
        )

        # --- 3. pull onto an empty registry ------------------------------------------------
        s3.upload_file(str(blob), "bench", "raw/default")
        t_down_default, _ = timed(
            lambda: s3.download_file("bench", "raw/default", str(work / "raw-default"))
        )
        t_down_tuned, _ = timed(
            lambda: s3.download_file(
                "bench", "raw/default", str(work / "raw-tuned"), Config=download_config()
            )
        )
        s3.delete_object(Bucket="bench", Key="raw/default")
        for p in ("raw-default", "raw-tuned"):
            (work / p).unlink()
        print(f"raw download_file: default {rate(fsize, t_down_default)},"
              f" 64 MiB x 8 {rate(fsize, t_down_tuned)}", flush=True)  # fmt: skip
        reg_b = Registry.init(work / "b")
        add_remote(reg_b, "origin", "s3://bench/store", endpoint_url=endpoint)
        t_pull, rp = timed(lambda: open_remote(reg_b, "origin").pull(reg_b, tag1, actor="b"))
        print(f"pull {tag1}: {rp.bytes_fetched / MiB:.0f} MiB in {t_pull:.1f} s"
              f" = {rate(rp.bytes_fetched, t_pull)} (verified)", flush=True)  # fmt: skip
        from registry.verify import verify

        assert verify(reg_b, tag1).ok

        results.update({
            "raw_upload_default_mib_s": fsize / MiB / t_up_default,
            "raw_upload_default_before_after_mib_s": [fsize / MiB / t_up_before,
                                                      fsize / MiB / t_up_after],
            "push_mib_s": r1.bytes_sent / MiB / t_push1,
            "push_ratio_vs_default": (r1.bytes_sent / t_push1) / (fsize / t_up_default),
            "raw_upload_sha256_mib_s": fsize / MiB / t_up_sha,
            "push_ratio_vs_sha256": (r1.bytes_sent / t_push1) / (fsize / t_up_sha),
            "second_push_bytes_sent": new_bytes,
            "second_push_new_blob_bytes": sum(new_files.values()),
            "second_push_manifest_bytes": manifests,
            "second_push_ratio": new_bytes / sum(new_files.values()),
            "second_push_time_ratio": t_push2 / t_push1,
            "raw_download_default_mib_s": fsize / MiB / t_down_default,
            "raw_download_tuned_mib_s": fsize / MiB / t_down_tuned,
            "pull_mib_s": rp.bytes_fetched / MiB / t_pull,
            "pull_ratio_vs_default": (rp.bytes_fetched / t_pull) / (fsize / t_down_default),
            "pull_ratio_vs_tuned": (rp.bytes_fetched / t_pull) / (fsize / t_down_tuned),
        })  # fmt: skip

        # --- 4. aws s3 sync of the same store ------------------------------------------------
        if args.aws:
            src = reg_a.root / "blobs" / "sha256"

            def sync(a: str, b: str) -> float:
                cmd = [args.aws, "s3", "sync", a, b, "--only-show-errors", "--endpoint-url",
                       endpoint]  # fmt: skip
                return timed(lambda: subprocess.run(cmd, check=True))[0]

            t_sync_up = sync(str(src), "s3://bench/awssync")
            t_sync_again = sync(str(src), "s3://bench/awssync")
            t_sync_down = sync("s3://bench/awssync", str(work / "awsdown"))
            store_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            print(f"aws s3 sync up {rate(store_bytes, t_sync_up)}, again (no change)"
                  f" {t_sync_again:.2f} s, down {rate(store_bytes, t_sync_down)}",
                  flush=True)  # fmt: skip
            results.update({"aws_sync_up_mib_s": store_bytes / MiB / t_sync_up,
                            "aws_sync_noop_s": t_sync_again,
                            "aws_sync_down_mib_s": store_bytes / MiB / t_sync_down})  # fmt: skip
        reg_a.close()
        reg_b.close()
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

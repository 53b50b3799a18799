"""Dataset-audit at scale, and its near-duplicate search against an exact baseline.

    .venv/bin/python bench/bench_dataset_audit.py [--rows 100000] [--words 100]
        [--eval-items 5000] [--sample 5000] [--seed 0] [--repeat 5] [--quick]

Generates a chat dataset of ROWS rows of about WORDS words (Zipf-distributed synthetic
vocabulary), with planted defects: 2% of rows are near copies of the row before them
(1 to 3 words substituted), 0.5% are exact copies with case/whitespace changed, and the
eval set of EVAL_ITEMS items holds 50 training rows verbatim and 50 with one word changed.
A byte-level BPE tokenizer is trained on the data (not timed) and a Llama-3-style chat
template renders every row for the truncation check.

1. Times the whole audit (`gates.data.Audit`: read + format, exact and near duplicates,
   contamination, license, rendering + tokenizing every row) and checks it found the
   planted defects. Target: under 60 s on a 2-core machine.
2. On the first SAMPLE rows, times the MinHash/LSH near-duplicate search and an exact
   all-pairs Jaccard baseline (every pair's similarity, vectorised per row), and prints
   the recall of the LSH search against the baseline's pairs (target >= 0.95), of the
   planted pairs, and the times' ratio.
3. On the same sample, against datasketch at tuned parameters: the same word 3-grams,
   MinHash.bulk (128 permutations) + MinHashLSH(threshold=0.8, params=(b, r)) with the
   gate's own (b, r) (21, 6), then the same exact Jaccard verification of every
   candidate. Both pipelines start from the texts; REPEAT runs, interleaved, medians and
   the ratio datasketch / gate, with recall of the planted pairs and false positives
   after verification. datasketch at its default (b, r) is run once, for reference.

--quick: 10,000 rows, 1,000 eval items, --repeat 3 (the sample comparison is unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gates import data, minhash, rows

TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def make_words(rng: random.Random, n: int) -> tuple[list[str], list[float]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list({"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(n)})
    weights = [1 / (i + 1) ** 1.1 for i in range(len(words))]
    return words, weights


def sentence(rng: random.Random, words: list[str], cum: list[float], n: int) -> list[str]:
    return rng.choices(words, cum_weights=cum, k=n)


def edit(rng: random.Random, ws: list[str], words: list[str], k: int) -> list[str]:
    ws = list(ws)
    for i in rng.sample(range(len(ws)), k):
        ws[i] = rng.choice(words)
    return ws


def chat(ws: list[str]) -> dict:
    cut = len(ws) // 3
    return {"messages": [{"role": "user", "content": " ".join(ws[:cut])},
                         {"role": "assistant", "content": " ".join(ws[cut:])}]}  # fmt: skip


def generate(out: Path, rows: int, n_words: int, eval_items: int, seed: int) -> dict:
    rng = random.Random(seed)
    words, weights = make_words(rng, 30000)
    cum = list(np.cumsum(weights))
    texts: list[list[str]] = []
    planted_near: list[tuple[int, int]] = []
    exact = 0
    while len(texts) < rows:
        ws = sentence(rng, words, cum, rng.randint(n_words - 20, n_words + 20))
        texts.append(ws)
        roll = rng.random()
        if roll < 0.02 and len(texts) < rows:
            texts.append(edit(rng, ws, words, rng.randint(1, 3)))
            planted_near.append((len(texts) - 2, len(texts) - 1))
        elif roll < 0.025 and len(texts) < rows:
            texts.append([w.upper() if i % 7 == 0 else w for i, w in enumerate(ws)])
            exact += 1
    (out / "train.jsonl").write_text("".join(json.dumps(chat(ws)) + "\n" for ws in texts))
    evals = [chat(sentence(rng, words, cum, n_words)) for _ in range(eval_items - 100)]
    leaked = rng.sample(range(rows), 100)
    evals += [chat(texts[i]) for i in leaked[:50]]
    evals += [chat(edit(rng, texts[i], words, 1)) for i in leaked[50:]]
    (out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return {"texts": texts, "near": planted_near, "exact": exact, "leaked": leaked}


def train_tokenizer(out: Path, texts: list[list[str]]) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=specials, show_progress=False)
    tok.train_from_iterator((" ".join(t) for t in texts[:20000]), trainer)
    tok.save(str(out / "tokenizer.json"))
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def exact_all_pairs(sh: minhash.Shingles, threshold: float) -> set[tuple[int, int]]:
    """Every pair's exact Jaccard: for each row, intersections with all later rows at once."""
    n = len(sh)
    uniq = [sh.unique(i) for i in range(n)]
    sizes = np.array([u.size for u in uniq])
    _, ids = np.unique(np.concatenate(uniq), return_inverse=True)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    mark = np.zeros(ids.max() + 1 if ids.size else 1, dtype=np.int32)
    found = set()
    for i in range(n - 1):
        own = ids[offsets[i] : offsets[i + 1]]
        mark[own] = 1
        rest = ids[offsets[i + 1] :]
        inter = np.add.reduceat(mark[rest], offsets[i + 1 : -1] - offsets[i + 1])
        mark[own] = 0
        union = sizes[i] + sizes[i + 1 :] - inter
        for j in np.flatnonzero(inter >= threshold * union):
            found.add((i, i + 1 + int(j)))
    return found


def datasketch_pairs(
    texts: list[str], n: int, threshold: float, params: tuple[int, int] | None = None
) -> tuple[set[tuple[int, int]], int]:
    """datasketch's MinHash + MinHashLSH on the gate's word n-grams (same normalisation:
    lower case, ASCII punctuation to spaces), at `params` (b, r) or its default; with
    `params`, every candidate is verified with its exact Jaccard, as the gate does.
    Returns the pairs and the number of candidates."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    sets = []
    for t in texts:
        ws = t.lower().encode().translate(minhash._PUNCT).split()
        sets.append({b" ".join(ws[k : k + n]) for k in range(max(len(ws) - n + 1, 1))})
    sketches = [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=128)]
    lsh = MinHashLSH(threshold=threshold, num_perm=128, params=params)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    cands = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if i != j}
    if params is None:
        return cands, len(cands)
    verified = {
        (i, j) for i, j in cands if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
    }
    return verified, len(cands)


def gate_pairs(texts: list[str], n: int, threshold: float) -> tuple[set[tuple[int, int]], dict]:
    """What the gate does: shingle, MinHash, LSH, exact verification."""
    pairs, stats = minhash.near_duplicate_pairs(minhash.shingle(texts, n), threshold, 128)
    return {(i, j) for i, j, _ in pairs}, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--eval-items", type=int, default=5000)
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="runs of the gate vs datasketch")
    ap.add_argument("--quick", action="store_true", help=__doc__.rsplit("--quick: ", 1)[1])
    args = ap.parse_args()
    if args.quick:
        args.rows, args.eval_items, args.repeat = 10_000, 1000, 3
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        world = generate(out, args.rows, args.words, args.eval_items, args.seed)
        tok = train_tokenizer(out, world["texts"])
        print(f"generated {args.rows} rows + {args.eval_items} eval items, tokenizer trained"
              f" ({time.perf_counter() - t:.1f} s, not part of the audit)")  # fmt: skip

        # 1. the whole audit
        params = {**data.DatasetAuditGate.defaults, "max_seq_len": 2048, "max_examples": 10**6}
        inp = data.AuditInput(
            splits=[("train", out / "train.jsonl")],
            eval_sets=[("eval.jsonl", out / "eval.jsonl")],
            params=params, license="mit", tokenizer=tok, template=TEMPLATE,
            special_tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
            max_seq_len=2048, max_seq_len_source="bench",
        )  # fmt: skip
        stages: list[tuple[str, float]] = []
        t0 = time.perf_counter()
        failures, metrics, evidence = data.Audit(
            inp, lambda m: stages.append((m, time.perf_counter()))
        ).run()
        total = time.perf_counter() - t0
        marks = [*stages, ("end", t0 + total)]
        for (name, a), (_, b) in zip(marks, marks[1:], strict=False):
            print(f"  {name:<28} {b - a:6.2f} s")
        print(f"audit of {metrics['rows']} rows vs {metrics['eval_items']} eval items:"
              f" {total:.1f} s (target < 60 s)")  # fmt: skip
        print(f"  exact duplicates {metrics['exact_duplicates']} (planted {world['exact']}),"
              f" near duplicates {metrics['near_duplicates']}"
              f" (planted {len(world['near'])}), contaminated {metrics['contaminated']}"
              f" (planted 100), truncated {metrics['truncated']}")  # fmt: skip
        print(f"  failures: {failures}")
        flagged = {p["row"]["line"] for p in evidence["contamination"]["pairs"]}
        flagged |= {c["line"] for p in evidence["contamination"]["pairs"] for c in p["copies"]}
        leaks = sum(i + 1 in flagged for i in world["leaked"])
        near_lines = {
            (p["a"]["line"], p["b"]["line"]) for p in evidence["duplicates"]["near_pairs"]
        }
        near_found = sum((a + 1, b + 1) in near_lines for a, b in world["near"])
        pair_texts = [rows.row_texts(chat(world["texts"][i]))[0] for p in world["near"] for i in p]
        psh = minhash.shingle(pair_texts, 3)
        above = [
            pair
            for k, pair in enumerate(world["near"])
            if minhash.jaccard(psh.unique(2 * k), psh.unique(2 * k + 1)) >= 0.8
        ]
        above_found = sum((a + 1, b + 1) in near_lines for a, b in above)
        print(
            f"  planted near copies with exact Jaccard >= 0.8: {len(above)}, found"
            f" {above_found} (recall {above_found / max(len(above), 1):.4f})"
        )
        print(
            f"  planted leaks flagged {leaks}/100, planted near copies paired with their"
            f" source {near_found}/{len(world['near'])}"
        )

        # 2. near duplicates on a sample: LSH vs exact all-pairs
        n = args.sample
        texts = [rows.row_texts(chat(ws))[0] for ws in world["texts"][:n]]
        t = time.perf_counter()
        found, stats = gate_pairs(texts, 3, 0.8)
        t_lsh = time.perf_counter() - t
        t = time.perf_counter()
        truth = exact_all_pairs(minhash.shingle(texts, 3), 0.8)
        t_exact = time.perf_counter() - t
        planted = {p for p in world["near"] if p[1] < n}
        planted_truth = planted & truth
        recall = len(found & truth) / max(len(truth), 1)
        print(f"sample of {n} rows: {len(truth)} pairs with Jaccard >= 0.8 (exact baseline),"
              f" {len(planted)} planted ({len(planted_truth)} of them >= 0.8)")  # fmt: skip
        print(f"  MinHash/LSH (b={stats['bands']}, r={stats['rows_per_band']}):"
              f" {t_lsh:.2f} s, {stats['candidates']} candidates, recall {recall:.4f},"
              f" false positives {len(found - truth)}")  # fmt: skip
        print(f"  exact all-pairs baseline: {t_exact:.2f} s"
              f" ({n * (n - 1) // 2} pairs); ratio {t_exact / t_lsh:.1f}x")  # fmt: skip

        # 3. the gate vs datasketch at the same (b, r), same verification, interleaved
        params = (stats["bands"], stats["rows_per_band"])
        runs: dict[str, list[float]] = {"gate": [], "datasketch": []}
        results: dict[str, tuple[set, int]] = {}
        for k in range(args.repeat):
            for who in ("gate", "datasketch") if k % 2 == 0 else ("datasketch", "gate"):
                t = time.perf_counter()
                if who == "gate":
                    got, st = gate_pairs(texts, 3, 0.8)
                    results[who] = (got, st["candidates"])
                else:
                    results[who] = datasketch_pairs(texts, 3, 0.8, params)
                runs[who].append(time.perf_counter() - t)
        t = time.perf_counter()
        results["datasketch default"] = datasketch_pairs(texts, 3, 0.8)
        runs["datasketch default"] = [time.perf_counter() - t]
        print(f"  gate vs datasketch on the same {n} rows, medians of {args.repeat}"
              f" (interleaved); datasketch default (b, r) once, unverified:")  # fmt: skip
        labels = {
            "gate": f"gate: MinHash/LSH b={params[0]} r={params[1]} + exact verification",
            "datasketch": f"datasketch MinHashLSH params={params} + exact verification",
            "datasketch default": "datasketch MinHashLSH(threshold=0.8) default b, r",
        }
        for who, label in labels.items():
            got, cands = results[who]
            med = statistics.median(runs[who])
            print(f"    {label:<62} {med:6.2f} s  planted {len(got & planted)}/{len(planted)},"
                  f" planted >= 0.8 {len(got & planted_truth)}/{len(planted_truth)},"
                  f" recall {len(got & truth) / max(len(truth), 1):.4f},"
                  f" false positives {len(got - truth)}, candidates {cands}")  # fmt: skip
        t_gate, t_ds = (statistics.median(runs[k]) for k in ("gate", "datasketch"))
        print(f"  ratio datasketch / gate (tuned, verified): {t_ds / t_gate:.1f}x")
        same = results["gate"][0] == results["datasketch"][0]
        print(f"  same verified pairs: {same}")
        ok = total < 60 and recall >= 0.95 and above_found >= 0.95 * len(above) and leaks == 100
        print("OK" if ok else "TARGET MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

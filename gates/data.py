"""The dataset-audit gate: format, duplicates, contamination, license and truncation.

- format: every row valid for the trainer's format (`gates.rows`); under `auto` each row
  in the format it is in (chat, prompt/completion or text), as the trainer reads it;
- exact duplicates: rows whose text is equal after normalising whitespace and case;
- near duplicates: MinHash + LSH candidates, each verified with its exact Jaccard
  similarity (`gates.minhash`), so no false positive is ever reported;
- contamination: an eval item is in a row when the row holds its exact text, its exact
  prompt, or at least `contamination_threshold` of its n-grams (containment, found with an
  exact inverted index, not a sketch);
- license and truncation (rendered in the template sandbox, tokenized); with packing the
  train split's long rows are split across sequences by the trainer, counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gates.base import Gate, GateContext, GateResult, require_component
from gates.minhash import containment_pairs, near_duplicate_pairs, normalize, shingle
from gates.rows import TEXT_CHARS, Rows, check_row, iter_jsonl
from registry.errors import GateError

if TYPE_CHECKING:
    from gates.sandbox import RenderError

ROLES = ["system", "user", "assistant", "tool"]
FORMATS = ("auto", "chat", "prompt_completion", "text")
TRAINER_FORMATS = ("chat", "prompt_completion", "text")  # what gates.train._encode reads
PACKED_SPLITS = ("train",)  # the trainer packs its train split; validation is truncated
LICENSES = ["apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc0-1.0"]
MAX_LEN_KEYS = ("max_seq_len", "max_seq_length", "max_length", "cutoff_len", "sequence_len")
LENGTH_SAMPLE = 10_000  # rows always tokenized for the token-length percentiles


def row_kind(row: dict[str, Any]) -> str:
    """The format a row is in, in the trainer's order (messages, prompt/completion, text).

    A row with only one of prompt and completion counts as prompt_completion, so it is
    reported as broken rather than trained on as its `text` alone."""
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    return "text" if "text" in row else "other"


def resolve_format(fmt: str, formats: dict[str, int]) -> str:
    """The format rows must have: the policy's; under auto, the one format the rows are in,
    or "mixed" when they are in several (each row is then checked in its own format, as
    the trainer encodes each row by itself)."""
    if fmt not in FORMATS:
        raise GateError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    seen = [k for k in TRAINER_FORMATS if formats.get(k)]
    return seen[0] if len(seen) == 1 else "mixed" if seen else "chat"


def row_error(row: Any, fmt: str, roles: list[str]) -> str | None:
    """Why a row is not valid in `fmt` (under "mixed": in its own format), or None."""
    if fmt != "mixed" or not isinstance(row, dict):
        return check_row(row, fmt, roles)
    kind = row_kind(row)
    if kind == "other":
        return "row has no messages, prompt/completion or text"
    return check_row(row, kind, roles)


# --- the audit ----------------------------------------------------------------------------------


@dataclass
class AuditInput:
    """Everything the audit reads; the gate builds it from the bundle, the bench by hand."""

    splits: list[tuple[str, Path]]
    eval_sets: list[tuple[str, Path]]
    params: dict[str, Any]
    license: str | None = None
    tokenizer: Any = None  # tokenizers.Tokenizer
    template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    max_seq_len: int | None = None
    max_seq_len_source: str | None = None
    packing: bool = False  # the trainer packs the train split: long rows are split, not cut


class Audit:
    """One run of the dataset audit; `run()` returns (failures, metrics, evidence)."""

    def __init__(self, inp: AuditInput, progress: Any = None) -> None:
        self.inp = inp
        self.p = inp.params
        self.cap = int(self.p["max_examples"])
        self.progress = progress or (lambda _m: None)
        self.failures: list[str] = []
        self.metrics: dict[str, Any] = {}
        self.evidence: dict[str, Any] = {}

    def run(self) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        self.progress("reading splits")
        rows = self.read()
        self.check_license()
        self.progress(f"duplicates in {len(rows.text)} rows")
        groups = self.duplicates(rows)
        self.progress("contamination")
        self.contamination(rows, groups)
        self.progress("truncation")
        self.truncation(rows)
        return self.failures, self.metrics, self.evidence

    # -- format -------------------------------------------------------------------------------

    def read(self) -> Rows:
        formats: dict[str, int] = {}
        raw: list[tuple[str, int, Any, str | None]] = []
        for name, path in self.inp.splits:
            for lineno, row, err in iter_jsonl(path):
                raw.append((name, lineno, row, err))
                if isinstance(row, dict):
                    kind = row_kind(row)
                    formats[kind] = formats.get(kind, 0) + 1
        fmt = resolve_format(str(self.p["format"]), formats)
        roles = list(self.p["allowed_roles"])
        rows = Rows()
        errors: list[dict[str, Any]] = []
        by_split: dict[str, dict[str, int]] = {}
        for name, lineno, row, err in raw:
            stats = by_split.setdefault(name, {"rows": 0, "format_errors": 0})
            stats["rows"] += 1
            err = err or row_error(row, fmt, roles)
            if err:
                stats["format_errors"] += 1
                errors.append({"split": name, "line": lineno, "error": err})
            else:
                rows.add((name, lineno), row)
        total_errors = len(errors)
        self.metrics.update(rows=len(raw), format=fmt, format_errors=total_errors)
        self.evidence["format"] = {
            "policy": self.p["format"],
            "expected": fmt,
            "formats_seen": formats,
            "by_split": by_split,
            "errors": errors[: self.cap],
        }
        if total_errors > int(self.p["max_format_errors"]):
            first = errors[0]
            what = "chat, prompt_completion or text" if fmt == "mixed" else fmt
            self.failures.append(
                f"{total_errors} row(s) are not valid {what} rows (first: {first['split']}"
                f" line {first['line']}: {first['error']})"
            )
        return rows

    # -- license ------------------------------------------------------------------------------

    def check_license(self) -> None:
        allowed = [str(x).lower() for x in self.p["licenses"]]
        lic = self.inp.license.lower() if self.inp.license else None
        self.metrics["license"] = lic
        self.evidence["license"] = {"license": lic, "allowed": allowed}
        if lic is None:
            self.failures.append(
                "the dataset has no license (add `license:` to its card or register it with"
                " --license)"
            )
        elif lic not in allowed:
            self.failures.append(f"dataset license {lic!r} is not allowed ({', '.join(allowed)})")

    # -- duplicates ----------------------------------------------------------------------------

    def duplicates(self, rows: Rows) -> list[list[int]]:
        """Exact groups (by normalised text), then near-duplicate clusters over them."""
        first: dict[str, int] = {}  # normalized text -> exact group
        group_of: list[int] = []
        groups: list[list[int]] = []
        for i, t in enumerate(rows.text):
            g = first.setdefault(normalize(t), len(groups))
            if g == len(groups):
                groups.append([])
            groups[g].append(i)
            group_of.append(g)
        reps = [g[0] for g in groups]
        self.rep_shingles = shingle([rows.text[i] for i in reps], int(self.p["ngram"]))
        threshold = float(self.p["near_duplicate_threshold"])
        pairs, lsh = near_duplicate_pairs(self.rep_shingles, threshold, int(self.p["num_perm"]))
        parent = list(range(len(groups)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in pairs:
            parent[find(b)] = find(a)
        clusters: dict[int, list[int]] = {}
        for g, members in enumerate(groups):
            clusters.setdefault(find(g), []).extend(members)
        exact = near = 0
        leaks: list[dict[str, Any]] = []
        per_split: dict[str, int] = {}
        for members in clusters.values():
            if len(members) < 2:
                continue
            members.sort()  # split order (train first), then line
            home = rows.where[members[0]][0]
            kept: set[int] = set()  # exact groups already present in the home split
            for i in members:
                split = rows.where[i][0]
                if split != home:
                    leaks.append({"row": rows.ref(i), "duplicates": rows.ref(members[0])})
                    continue
                if kept:
                    per_split[split] = per_split.get(split, 0) + 1
                    if group_of[i] in kept:
                        exact += 1
                    else:
                        near += 1
                kept.add(group_of[i])
        total = max(len(rows.text), 1)
        rate = (exact + near) / total
        exact_groups = [
            {"rows": [rows.ref(i) for i in g[: self.cap]], "size": len(g)}
            for g in sorted((g for g in groups if len(g) > 1), key=len, reverse=True)
        ]
        near_pairs = sorted(pairs, key=lambda x: -x[2])
        self.metrics.update(
            exact_duplicates=exact,
            near_duplicates=near,
            duplicate_rate=round(rate, 6),
            split_leaks=len(leaks),
        )
        self.evidence["duplicates"] = {
            "exact_groups": exact_groups[: self.cap],
            "near_pairs": [
                {"a": rows.ref(reps[a]), "b": rows.ref(reps[b]), "jaccard": round(s, 4)}
                for a, b, s in near_pairs[: self.cap]
            ],
            "redundant_by_split": per_split,
            "split_leaks": leaks[: self.cap],
            "lsh": lsh,
        }
        if rate > float(self.p["max_duplicate_rate"]):
            self.failures.append(
                f"duplicate rate {rate:.4f} ({exact} exact, {near} near duplicates) is above"
                f" {self.p['max_duplicate_rate']}"
            )
        if len(leaks) > int(self.p["max_split_leaks"]):
            leak = leaks[0]
            self.failures.append(
                f"{len(leaks)} row(s) duplicate a row of another split (first:"
                f" {leak['row']['split']} line {leak['row']['line']} ="
                f" {leak['duplicates']['split']} line {leak['duplicates']['line']})"
            )
        self.reps, self.by_text = reps, first
        return groups

    # -- contamination ---------------------------------------------------------------------------

    def contamination(self, rows: Rows, groups: list[list[int]]) -> None:
        items = Rows()
        sets: dict[str, int] = {}
        for name, path in self.inp.eval_sets:
            count = 0
            for lineno, row, err in iter_jsonl(path):
                if err or not isinstance(row, dict):
                    raise GateError(f"eval set {name} line {lineno}: {err or 'not an object'}")
                items.add((name, lineno), row)
                count += 1
            sets[name] = count
        wanted = set(self.p["contamination_splits"])
        scope = [i for i, g in enumerate(groups) if not wanted or rows.where[g[0]][0] in wanted]
        matches: dict[tuple[int, int], tuple[str, float]] = {}
        in_scope = np.zeros(len(groups), dtype=bool)
        in_scope[scope] = True
        by_prompt: dict[str, list[int]] = {}
        for g in scope:
            key = normalize(rows.prompt[self.reps[g]])
            if key:
                by_prompt.setdefault(key, []).append(g)
        for e in range(len(items.text)):
            if (hit := self.by_text.get(normalize(items.text[e]))) is not None and in_scope[hit]:
                matches[(hit, e)] = ("exact", 1.0)
            for g in by_prompt.get(normalize(items.prompt[e]), ()) if items.prompt[e] else ():
                matches.setdefault((g, e), ("prompt", 1.0))
        threshold = float(self.p["contamination_threshold"])
        item_sh = shingle(items.text, int(self.p["ngram"]))
        min_ngrams = int(self.p["contamination_min_ngrams"])
        for g, e, c in containment_pairs(self.rep_shingles, item_sh, threshold, min_ngrams):
            if in_scope[g]:
                matches.setdefault((g, e), ("fuzzy", c))
        contaminated = sorted({i for g, _ in matches for i in groups[g]})
        pairs = sorted(matches.items(), key=lambda kv: (self.reps[kv[0][0]], kv[0][1]))
        self.metrics["contaminated"] = len(contaminated)
        self.metrics["eval_items"] = len(items.text)
        self.evidence["contamination"] = {
            "eval_sets": sets,
            "threshold": threshold,
            "min_ngrams": min_ngrams,
            "pairs": [
                {
                    "row": rows.ref(self.reps[g]),
                    "copies": [  # the row's exact duplicates, also contaminated
                        {"split": rows.where[i][0], "line": rows.where[i][1]}
                        for i in groups[g][1 : self.cap + 1]
                    ],
                    "eval": {
                        "set": items.where[e][0],
                        "line": items.where[e][1],
                        "text": items.text[e][:TEXT_CHARS],
                    },
                    "match": kind,
                    "containment": round(c, 4),
                }
                for (g, e), (kind, c) in pairs[: self.cap]
            ],
        }
        if len(contaminated) > int(self.p["max_contaminated"]):
            (g, e), (kind, _c) = pairs[0]
            where = rows.where[self.reps[g]]
            self.failures.append(
                f"{len(contaminated)} row(s) contain eval items (first: {where[0]} line"
                f" {where[1]} matches {items.where[e][0]} line {items.where[e][1]}, {kind})"
            )

    # -- truncation ------------------------------------------------------------------------

    def truncation(self, rows: Rows) -> None:
        limit, tok = self.inp.max_seq_len, self.inp.tokenizer
        info: dict[str, Any] = {"max_seq_len": limit, "source": self.inp.max_seq_len_source}
        self.evidence["truncation"] = info
        needs_template = any(
            "messages" in r or isinstance(r.get("prompt"), list) for r in rows.data
        )
        reason = (
            "no max_seq_len in the policy or the training config"
            if not limit
            else "the tokenizer has no tokenizer.json"
            if tok is None
            else "the bundle has no chat template"
            if needs_template and not self.inp.template
            else None
        )
        if reason or not limit:  # no limit always has a reason: `not limit` narrows the type
            info.update(checked=False, reason=reason)
            self.metrics["truncation_checked"] = False
            return
        from gates.sandbox import RenderError, Sandbox

        sandbox = Sandbox(self.inp.template) if self.inp.template else None
        texts, prompts, errors = self._render(rows, sandbox, RenderError)
        measure, sampled = self._to_tokenize(tok, texts, limit)
        lengths = self._lengths(tok, [texts[i] or "" for i in measure])
        packed = set(PACKED_SPLITS) if self.inp.packing else set()
        by_split: dict[str, dict[str, Any]] = {}
        for name, _ in rows.where:
            s = by_split.setdefault(
                name, {"rows": 0, "truncated": 0, "split_by_packing": 0, "lengths": []}
            )
            s["rows"] += 1
        offenders: list[tuple[int, int]] = []  # (tokens, row)
        split_rows: list[tuple[int, int]] = []
        for i, n in zip(measure.tolist(), lengths.tolist(), strict=True):
            s = by_split[rows.where[i][0]]
            if sampled[i]:
                s["lengths"].append(n)
            if n > limit and texts[i] is not None:
                is_packed = rows.where[i][0] in packed  # split across sequences, not cut
                s["split_by_packing" if is_packed else "truncated"] += 1
                (split_rows if is_packed else offenders).append((n, i))
        cut = lost = 0
        worst: list[dict[str, Any]] = []
        offenders.sort(reverse=True)
        prompt_lens = self._lengths(tok, [self._prompt(prompts[i], sandbox) for _, i in offenders])
        for (n, i), p_len in zip(offenders, prompt_lens.tolist(), strict=True):
            state = "answer lost" if p_len >= limit else "answer cut"
            lost += state == "answer lost"
            cut += state == "answer cut"
            if len(worst) < self.cap:
                worst.append({**rows.ref(i), "tokens": n, "prompt_tokens": p_len, "effect": state})
        rates = {}
        for split, s in by_split.items():
            arr = np.asarray(s.pop("lengths") or [0])
            s.update(
                rate=round(s["truncated"] / max(s["rows"], 1), 6),
                p50_tokens=int(np.percentile(arr, 50)),
                p95_tokens=int(np.percentile(arr, 95)),
                max_tokens=max(
                    [
                        int(arr.max()),
                        *(n for n, i in offenders + split_rows if rows.where[i][0] == split),
                    ]
                ),
                length_sample=int(arr.size),
            )
            rates[split] = s["rate"]
        split_rows.sort(reverse=True)
        info["packing"] = {
            "enabled": self.inp.packing,
            "packed_splits": sorted(packed),
            "rows_split": len(split_rows),
            "longest": [{**rows.ref(i), "tokens": n} for n, i in split_rows[: self.cap]],
            "note": "with packing the trainer concatenates train rows and cuts them into"
            " max_seq_len blocks: a longer row is split across sequences, not truncated;"
            " other splits are still truncated",
        }
        info.update(
            checked=True,
            by_split=by_split,
            worst=worst,
            render_errors=errors,
            tokenized=int(measure.size),
            method="every row whose 2 x UTF-8 bytes + 2 could exceed max_seq_len is tokenized;"
            f" length percentiles from an even sample of up to {LENGTH_SAMPLE} rows",
        )
        self.metrics.update(
            truncation_checked=True,
            truncated=len(offenders),
            split_by_packing=len(split_rows),
            answer_cut=cut,
            answer_lost=lost,
            truncated_rate=max(rates.values(), default=0.0),
        )
        if errors:
            first = errors[0]
            self.failures.append(
                f"the chat template cannot render {len(errors)} row(s) (first: {first['split']}"
                f" line {first['line']}: {first['error']})"
            )
        over = {k: v for k, v in rates.items() if v > float(self.p["max_truncated_rate"])}
        if over:
            split, rate = max(over.items(), key=lambda kv: kv[1])
            self.failures.append(
                f"{len(offenders)} row(s) exceed max_seq_len {limit} ({split}: {rate:.2%};"
                f" {cut} with the answer cut, {lost} with the answer lost)"
            )

    def _render(
        self, rows: Rows, sandbox: Any, render_error: type[RenderError]
    ) -> tuple[list, list, list]:
        """Training text of each row (None when it cannot render) and a prompt renderer."""
        texts: list[str | None] = []
        prompts: list[Any] = []
        errors: list[dict[str, Any]] = []
        specials = self.inp.special_tokens
        for i, row in enumerate(rows.data):
            try:
                if "messages" in row:
                    msgs = row["messages"]
                    texts.append(sandbox.render_json(msgs, False, specials))
                    prompts.append(lambda sb, m=msgs[:-1]: sb.render_json(m, True, specials))
                elif isinstance(row.get("prompt"), list):
                    p, c = row["prompt"], row["completion"]
                    texts.append(sandbox.render_json(p + c, False, specials))
                    prompts.append(lambda sb, m=p: sb.render_json(m, True, specials))
                elif "prompt" in row:
                    texts.append(row["prompt"] + row["completion"])
                    prompts.append(lambda _sb, t=row["prompt"]: t)
                else:
                    texts.append(row["text"])
                    prompts.append(lambda _sb: "")
            except render_error as exc:
                texts.append(None)
                prompts.append(lambda _sb: "")
                errors.append(
                    {"split": rows.where[i][0], "line": rows.where[i][1], "error": str(exc)}
                )
                if exc.kind in ("timeout", "memory") or len(errors) >= self.cap:
                    n = len(rows.data) - len(texts)
                    texts += [None] * n
                    prompts += [lambda _sb: ""] * n
                    errors[-1]["error"] += f" (rendering stopped; {n} row(s) not rendered)"
                    break
        return texts, prompts, errors

    @staticmethod
    def _to_tokenize(
        tok: Any, texts: list[str | None], limit: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows to tokenize: an even sample (for the length distribution) plus every row
        that could exceed `limit`. A token covers at least one byte of the normalized text,
        except a prefix a pre-tokenizer adds per section, so tokens <= 2 x bytes + 2."""
        norm = tok.normalizer
        maybe = np.fromiter(
            (
                t is not None
                and 2 * len((norm.normalize_str(t) if norm else t).encode("utf-8")) + 2 > limit
                for t in texts
            ),
            dtype=bool,
            count=len(texts),
        )
        sampled = np.zeros(len(texts), dtype=bool)
        sampled[:: max(1, -(-len(texts) // LENGTH_SAMPLE))] = True
        return np.flatnonzero(maybe | sampled), sampled

    @staticmethod
    def _prompt(render: Any, sandbox: Any) -> str:
        from gates.sandbox import RenderError

        try:
            return render(sandbox)
        except RenderError:
            return ""

    @staticmethod
    def _lengths(tok: Any, texts: list[str], chunk: int = 20_000) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.int64)
        for lo in range(0, len(texts), chunk):
            encs = tok.encode_batch_fast(texts[lo : lo + chunk], add_special_tokens=False)
            out[lo : lo + len(encs)] = [len(e.ids) for e in encs]
        return out


# --- the gate ---------------------------------------------------------------------------------


def split_files(ctx: GateContext) -> list[tuple[str, str]]:
    """(split name, path inside the dataset dir) of each JSONL split, train first."""
    comp = ctx.bundle["components"].get("dataset")
    found: list[tuple[str, str]] = []
    for f in comp["files"] if comp else ():
        parts = f["path"].split("/")
        top = len(parts) == 1 or (len(parts) == 2 and parts[0] == "data")
        if top and f["path"].endswith(".jsonl"):
            found.append((parts[-1][: -len(".jsonl")], f["path"]))
    return sorted(found, key=lambda s: (s[0] != "train", s[0]))


def config_max_len(meta: dict[str, Any]) -> tuple[int | None, str | None]:
    hp = meta.get("hyperparameters") or {}
    for key in MAX_LEN_KEYS:
        value = hp.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"config {key}"
    return None, None


class DatasetAuditGate(Gate):
    """Audit the bundle's dataset before a single training step.

    Policy keys (defaults):
    - `format` ("auto"): chat, prompt_completion, text, or auto (each row in the format
      it is in, as the trainer reads it; a dataset may mix them); rows not in it fail,
      reported by split and line;
    - `allowed_roles` (system, user, assistant, tool);
    - `max_format_errors` (0);
    - `licenses` (apache-2.0, mit, bsd-3-clause, cc-by-4.0, cc0-1.0): the dataset card's
      license must be one of these; a missing license fails;
    - `ngram` (3): words per shingle; `num_perm` (128): MinHash permutations;
    - `near_duplicate_threshold` (0.8): Jaccard similarity of two near duplicates;
    - `max_duplicate_rate` (0.01): redundant rows (exact + near, within a split) / rows;
    - `max_split_leaks` (0): rows that duplicate a row of another split;
    - `eval_sets` ([]): JSONL eval files, relative to the policy;
    - `contamination_threshold` (0.8): share of an eval item's n-grams found in one row;
    - `contamination_min_ngrams` (8): shorter eval items are matched exactly only (their
      whole text, or their prompt), never fuzzily;
    - `contamination_splits` ([] = every split);
    - `max_contaminated` (0): rows holding an eval item (exactly, by prompt, or fuzzily);
    - `max_seq_len` (0 = the training config's max_seq_len / max_seq_length / max_length);
    - `max_truncated_rate` (0.0): per split, rows whose rendered tokens exceed max_seq_len
      (with the config's `packing`, train rows over it are split, not truncated: counted
      as `split_by_packing` instead);
    - `max_examples` (20): offenders listed per finding in the evidence.
    """

    name = "dataset-audit"
    version = "1"
    defaults = {
        "format": "auto",
        "allowed_roles": ROLES,
        "max_format_errors": 0,
        "licenses": LICENSES,
        "ngram": 3,
        "num_perm": 128,
        "near_duplicate_threshold": 0.8,
        "max_duplicate_rate": 0.01,
        "max_split_leaks": 0,
        "eval_sets": [],
        "contamination_threshold": 0.8,
        "contamination_min_ngrams": 8,
        "contamination_splits": [],
        "max_contaminated": 0,
        "max_seq_len": 0,
        "max_truncated_rate": 0.0,
        "max_examples": 20,
    }
    description = "format, duplicates, eval contamination, license and truncation of the dataset"

    def run(self, ctx: GateContext) -> GateResult:
        from gates.template import bundle_template, load_tokenizer, special_tokens

        root = require_component(ctx, "dataset")
        p = ctx.params
        max_len, source = (int(p["max_seq_len"]), "policy") if p["max_seq_len"] else (None, None)
        if max_len is None:
            max_len, source = config_max_len(ctx.meta("config"))
        inp = AuditInput(
            splits=[(name, root / rel) for name, rel in split_files(ctx)],
            eval_sets=[(rel, ctx.input_file(rel)) for rel in p["eval_sets"]],
            params=p,
            license=ctx.meta("dataset").get("license"),
            tokenizer=load_tokenizer(ctx),
            template=bundle_template(ctx)[0],
            special_tokens=special_tokens(ctx),
            max_seq_len=max_len,
            max_seq_len_source=source,
            packing=(ctx.meta("config").get("hyperparameters") or {}).get("packing") is True,
        )
        failures, metrics, evidence = Audit(inp, ctx.progress).run()
        evidence["parameters"] = {**p, "max_seq_len": max_len}
        thresholds = {
            k: p[k]
            for k in (
                "near_duplicate_threshold",
                "max_duplicate_rate",
                "max_split_leaks",
                "contamination_threshold",
                "max_contaminated",
                "max_truncated_rate",
                "max_format_errors",
                "licenses",
            )
        }
        thresholds["max_seq_len"] = max_len
        summary = (
            f"{metrics['rows']} rows: {metrics['duplicate_rate']:.2%} duplicates, "
            f"{metrics['contaminated']} contaminated, license {metrics['license']}, "
            + (
                f"{metrics['truncated']} truncated"
                + (
                    f", {metrics['split_by_packing']} split by packing"
                    if metrics["split_by_packing"]
                    else ""
                )
                if metrics["truncation_checked"]
                else f"truncation NOT checked ({evidence['truncation']['reason']})"
            )
        )
        return GateResult.check(failures, metrics, thresholds, evidence, summary)

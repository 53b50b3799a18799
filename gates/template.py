"""The chat-template gate: render sample conversations in the sandbox and check them.

Drift against the tokenizer's own template, stop tokens, the generation prompt and the
assistant answers in the rendered training text. Rendering itself (and its limits) is in
`gates.sandbox`. Nothing here imports torch or transformers: token checks load the
bundle's `tokenizer.json` with the `tokenizers` library.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gates.base import Gate, GateContext, GateResult
from gates.sandbox import MAX_OUTPUT_CHARS, TIMEOUT_S, RenderError, Sandbox
from registry.errors import GateError, InvalidInputError
from registry.untrusted import load_json

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


# --- reading the bundle's tokenizer and templates ---------------------------------------------


def special_tokens(ctx: GateContext) -> dict[str, str]:
    """bos/eos/... token strings the template sees, from the tokenizer's metadata."""
    found = ctx.meta("tokenizer").get("special_tokens") or {}
    return {k: v for k, v in found.items() if k in SPECIAL_TOKEN_KEYS and isinstance(v, str)}


def _component_file(ctx: GateContext, kind: str, path: str) -> bytes | None:
    comp = ctx.bundle["components"].get(kind)
    for f in comp["files"] if comp else ():
        if f["path"] == path:
            return ctx.registry.store.read_bytes(f["digest"])
    return None


def _template_from_config(data: bytes | None) -> str | None:
    try:
        cfg = load_json(data, "tokenizer_config.json") if data else None
    except InvalidInputError:
        return None
    tmpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(tmpl, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default")
    return tmpl if isinstance(tmpl, str) else None


def tokenizer_template(ctx: GateContext) -> tuple[str | None, str | None]:
    """The tokenizer's own template and where it was found (read from the tokenizer
    component, since export lets the bundle's template replace the top-level file)."""
    data = _component_file(ctx, "tokenizer", "chat_template.jinja")
    if data is not None:
        return data.decode("utf-8", errors="replace"), "chat_template.jinja"
    for name in ("tokenizer_config.json", "chat_template.json"):
        if (tmpl := _template_from_config(_component_file(ctx, "tokenizer", name))) is not None:
            return tmpl, name
    return None, None


def bundle_template(ctx: GateContext) -> tuple[str | None, str | None]:
    """The template the bundle serves with: its chat_template component, else the
    tokenizer's own."""
    data = _component_file(ctx, "chat_template", "chat_template.jinja")
    if data is not None:
        return data.decode("utf-8", errors="replace"), "chat_template component"
    text, where = tokenizer_template(ctx)
    return text, (f"tokenizer {where}" if where else None)


def load_tokenizer(ctx: GateContext) -> Any:
    """The bundle tokenizer via the `tokenizers` library (no transformers), or None."""
    path = ctx.workdir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a plain Exception on bad files
        raise GateError(f"tokenizer.json could not be read: {exc}") from None


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = load_json(path.read_bytes(), path.name)
    except (OSError, InvalidInputError):
        return {}
    return data if isinstance(data, dict) else {}


def stop_token_ids(ctx: GateContext) -> dict[str, list[int]]:
    """eos ids the generation settings stop at, by source file."""
    out: dict[str, list[int]] = {}
    candidates = [("generation_config.json", ctx.workdir / "generation_config.json")]
    base = ctx.component_dir("base_model")
    if base is not None:
        candidates += [
            ("base/generation_config.json", base / "generation_config.json"),
            ("base/config.json", base / "config.json"),
        ]
    for label, path in candidates:
        value = _json_file(path).get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        ids = [i for i in values if isinstance(i, int) and not isinstance(i, bool)]
        if ids:
            out[label] = ids
    return out


# --- the gate -------------------------------------------------------------------------------

_TOKEN_LIKE = re.compile(r"<[^<>\s]{1,64}>|\[/?[A-Z][A-Z_]{1,31}\]")
FALLBACK_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Now say goodbye."},
        {"role": "assistant", "content": "Goodbye."},
    ],
]


def dataset_conversations(ctx: GateContext, count: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """Up to `count` chat conversations from the dataset, evenly spaced, with their source."""
    from gates.data import split_files

    root = ctx.component_dir("dataset")
    if root is None or count <= 0:
        return []
    convs: list[tuple[str, list[dict[str, Any]]]] = []
    for split_name, path in split_files(ctx):
        with open(root / path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    row = load_json(raw, "dataset row")
                except InvalidInputError:
                    continue
                msgs = row.get("messages") if isinstance(row, dict) else None
                if (
                    isinstance(msgs, list)
                    and msgs
                    and all(isinstance(m, dict) for m in msgs)
                    and msgs[-1].get("role") == "assistant"
                    and isinstance(msgs[-1].get("content"), str)
                ):
                    convs.append((f"{split_name}:{lineno}", msgs))
    if len(convs) <= count:
        return convs
    step = len(convs) / count
    return [convs[int(i * step)] for i in range(count)]


def _first_difference(
    a: str, b: str, labels: tuple[str, str] = ("bundle", "tokenizer"), context: int = 40
) -> dict[str, Any]:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, n - context)
    return {"offset": n, labels[0]: a[lo : n + context], labels[1]: b[lo : n + context]}


def _diff_tokens(tok: Any, a: list[int], b: list[int]) -> dict[str, Any]:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    window = slice(max(0, n - 3), n + 4)
    return {
        "position": n,
        "bundle": [tok.id_to_token(i) for i in a[window]],
        "tokenizer": [tok.id_to_token(i) for i in b[window]],
    }


class ChatTemplateGate(Gate):
    """Render sample conversations through the bundle's chat template in a sandbox.

    Checks: the template renders (sandboxed, time/size limits); it renders every sample,
    with and without the generation prompt, to the same text (so the same tokens) as the
    tokenizer's own template (drift; sources that differ only in bytes that do not render,
    say a trailing newline, are not drift); the token it ends assistant turns with is in the
    vocabulary and is a stop token of the tokenizer or generation config; the generation
    prompt is a text and token prefix of the training text and ends where the last
    assistant answer starts (whitespace aside: a template whose user turn already ends with
    the assistant marker, or that has no role markers, needs no generation prompt); every
    assistant answer is intact.

    Policy keys: `samples` (conversations taken from the dataset, default 8),
    `timeout_s` (per render, 2.0), `max_output_chars` (per render, 1000000),
    `require_tokenizer_template` (fail when the tokenizer has no template of its own to
    compare with, default false).
    """

    name = "chat-template"
    version = "1"
    defaults = {
        "samples": 8,
        "timeout_s": TIMEOUT_S,
        "max_output_chars": MAX_OUTPUT_CHARS,
        "require_tokenizer_template": False,
    }
    description = "chat template renders safely, matches the tokenizer's, stops and prompts right"

    def run(self, ctx: GateContext) -> GateResult:
        p = ctx.params
        source, where = bundle_template(ctx)
        if source is None:
            missing = "the bundle has no chat template (no chat_template component, none in the"
            return GateResult.check([f"{missing} tokenizer)"], {}, {}, {}, "")
        tok = load_tokenizer(ctx)
        if tok is None:
            raise GateError("the tokenizer has no tokenizer.json; token checks need it")
        specials = special_tokens(ctx)
        failures: list[str] = []
        evidence: dict[str, Any] = {
            "template": {"source": where, "sha256": _sha256(source), "chars": len(source)},
            "special_tokens": specials,
        }
        try:
            sandbox = Sandbox(
                source, timeout_s=float(p["timeout_s"]), max_output_chars=int(p["max_output_chars"])
            )
        except RenderError as exc:
            evidence["render_error"] = {"kind": exc.kind, "message": exc.message}
            return GateResult.check(
                [f"the chat template does not compile: {exc}"], {}, {}, evidence, ""
            )
        convs = dataset_conversations(ctx, int(p["samples"]))
        evidence["samples_from"] = "dataset" if convs else "built-in conversations"
        if not convs:
            convs = [(f"built-in:{i}", c) for i, c in enumerate(FALLBACK_CONVERSATIONS)]
        try:
            samples = [self._sample(sandbox, tok, src, msgs, specials) for src, msgs in convs]
        except _SampleError as exc:
            evidence["render_error"] = {
                "sample": exc.source,
                "kind": exc.error.kind,
                "message": exc.error.message,
            }
            return GateResult.check(
                [f"rendering sample {exc.source} failed: {exc.error}"], {}, {}, evidence, ""
            )
        evidence["samples"] = [s.evidence() for s in samples]
        failures += self._prompt_checks(samples)
        stop = self._stop_check(ctx, tok, samples, specials)
        evidence["stop_token"] = stop
        failures += stop.pop("failures")
        drift = self._drift(ctx, source, tok, convs, specials, p, samples)
        evidence["drift"] = drift
        failures += drift.pop("failures")
        metrics = {
            "samples": len(samples),
            "drift": bool(drift.get("renders_differ")),
            "stop_token": stop.get("emitted"),
            "stop_token_ok": not stop.get("problems"),
            "prompt_prefix_ok": all(s.prefix_ok for s in samples),
            "prompt_ends_at_answer": all(
                s.answer_gap is not None and not s.answer_gap.strip() for s in samples
            ),
            "answers_intact": all(not s.missing_answers for s in samples),
            "max_tokens": max((len(s.ids) for s in samples), default=0),
        }
        thresholds = {k: p[k] for k in ("samples", "timeout_s", "max_output_chars")}
        return GateResult.check(
            failures,
            metrics,
            thresholds,
            evidence,
            f"template renders {len(samples)} samples, stops with {stop.get('emitted')!r},"
            " no drift"
            + (" (the sources differ byte-wise, not in rendering)" if drift.get("note") else ""),
        )

    # -- per-sample rendering --------------------------------------------------------------

    def _sample(
        self,
        sandbox: Sandbox,
        tok: Any,
        source: str,
        msgs: list[dict[str, Any]],
        specials: dict[str, str],
    ) -> _Sample:
        try:
            full = sandbox.render(msgs, False, **specials)
            prompt = sandbox.render(msgs[:-1], True, **specials)
            bare = sandbox.render(msgs[:-1], False, **specials)
        except RenderError as exc:
            raise _SampleError(source, exc) from None
        ids = tok.encode(full, add_special_tokens=False).ids
        prompt_ids = tok.encode(prompt, add_special_tokens=False).ids
        return _Sample(source, msgs, full, prompt, bare, ids, prompt_ids)

    def _prompt_checks(self, samples: list[_Sample]) -> list[str]:
        failures = []
        for s in samples:
            if not s.full.startswith(s.prompt):
                d = _first_difference(s.prompt, s.full, ("prompt", "training"))
                failures.append(
                    f"sample {s.source}: the generation prompt is not a prefix of the training"
                    f" text (differs at character {d['offset']})"
                )
            elif s.answer_gap is None:
                if len(s.msgs) - 1 not in s.missing_answers:  # else reported below
                    failures.append(
                        f"sample {s.source}: the assistant answer does not follow the generation"
                        " prompt in the training text"
                    )
            elif s.answer_gap.strip():
                failures.append(
                    f"sample {s.source}: the training text puts {s.answer_gap.strip()[:60]!r}"
                    " between the generation prompt and the assistant answer, which"
                    " add_generation_prompt=True does not produce"
                )
            elif not s.prefix_ok:
                failures.append(
                    f"sample {s.source}: prompt tokens are not a prefix of the training tokens"
                    f" (they diverge at token {s.token_divergence})"
                )
            if s.missing_answers:
                failures.append(
                    f"sample {s.source}: assistant answer(s) {s.missing_answers} are not intact"
                    " in the rendered text"
                )
        return failures[:10]

    # -- stop token ----------------------------------------------------------------------------

    def _stop_check(
        self, ctx: GateContext, tok: Any, samples: list[_Sample], specials: dict[str, str]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"failures": [], "problems": []}
        eos = specials.get("eos_token")
        eos_id = tok.token_to_id(eos) if eos else None
        gen = stop_token_ids(ctx)
        stop_ids = set(itertools.chain.from_iterable(gen.values()))
        if eos_id is not None:
            stop_ids.add(eos_id)
        out.update(eos_token=eos, eos_token_id=eos_id, generation_stop_ids=gen)
        if eos and eos_id is None:
            out["problems"].append(f"the tokenizer's eos_token {eos!r} is not in its vocabulary")
        special_ids = _special_ids(tok, specials)
        sample = next((s for s in samples if s.msgs[-1]["content"].strip()), samples[0])
        answer = sample.msgs[-1]["content"].strip()
        out["sample"] = sample.source
        at = sample.full.rfind(answer) if answer else -1
        suffix = sample.full[at + len(answer) :] if at >= 0 else ""
        out["text_after_answer"] = suffix[:200]
        suffix_ids = tok.encode(suffix, add_special_tokens=False).ids if suffix else []
        emitted_id = next((i for i in suffix_ids if i in special_ids), None)
        if emitted_id is not None:
            emitted = tok.id_to_token(emitted_id)
            out.update(emitted=emitted, emitted_id=emitted_id, in_vocab=True)
            if stop_ids and emitted_id not in stop_ids:
                names = sorted({str(tok.id_to_token(i)) for i in stop_ids})
                out["problems"].append(
                    f"the template ends assistant turns with {emitted!r} (id {emitted_id}),"
                    f" but generation stops at {names} (ids {sorted(stop_ids)})"
                )
        else:
            m = _TOKEN_LIKE.search(suffix)
            emitted = m.group(0) if m else None
            out.update(emitted=emitted, emitted_id=None, in_vocab=False)
            if emitted is not None:
                pieces = [tok.id_to_token(i) for i in tok.encode(emitted).ids][:10]
                out["problems"].append(
                    f"the template ends assistant turns with {emitted!r}, which is not a token"
                    f" of the vocabulary (it tokenizes to {pieces})"
                )
            else:
                out["problems"].append(
                    f"the template emits no stop token after the assistant answer"
                    f" (text after it: {suffix[:40]!r}): the model never learns to stop"
                )
        out["failures"] = list(out["problems"])
        return out

    # -- drift against the tokenizer's own template ----------------------------------------------

    def _drift(
        self,
        ctx: GateContext,
        source: str,
        tok: Any,
        convs: list[tuple[str, list[dict[str, Any]]]],
        specials: dict[str, str],
        p: dict[str, Any],
        samples: list[_Sample],
    ) -> dict[str, Any]:
        own, where = tokenizer_template(ctx)
        out: dict[str, Any] = {"failures": [], "tokenizer_template": where}
        if own is None:
            out["checked"] = False
            if p["require_tokenizer_template"]:
                out["failures"].append("the tokenizer has no chat template of its own")
            return out
        out["checked"] = True
        out["tokenizer_sha256"] = _sha256(own)
        out["text_differs"] = own != source
        out["token_mismatches"] = []
        if own == source:
            out["renders_differ"] = False
            return out
        diff = difflib.unified_diff(
            own.splitlines(), source.splitlines(), f"tokenizer/{where}", "bundle", lineterm="", n=1
        )
        out["diff"] = [line[:300] for line in list(diff)[:60]]
        out["first_difference"] = _first_difference(source, own)
        try:
            theirs = Sandbox(
                own, timeout_s=float(p["timeout_s"]), max_output_chars=int(p["max_output_chars"])
            )
        except RenderError as exc:
            out["renders_differ"] = True
            out["tokenizer_template_error"] = {"sample": None, "message": str(exc)}
            out["failures"].append(
                f"the bundle's chat template differs from the tokenizer's {where}, which does"
                f" not compile: {exc}"
            )
            return out
        try:
            out.update(self._compare_renders(theirs, tok, specials, samples))
        except _SampleError as exc:
            out["renders_differ"] = True
            out["tokenizer_template_error"] = {"sample": exc.source, "message": str(exc.error)}
            out["failures"].append(
                f"the bundle's chat template differs from the tokenizer's {where}, which cannot"
                f" render sample {exc.source}: {exc.error}"
            )
            return out
        renders = out["render_mismatches"]
        if not renders:
            out["note"] = (
                "the sources differ byte-wise but render the same text (so the same tokens)"
                " on every sample, with and without the generation prompt"
            )
            return out
        first = renders[0]
        out["failures"].append(
            f"the bundle's chat template differs from the tokenizer's {where} and renders"
            f" {out['samples_differ']} sample(s) differently (first: sample {first['sample']},"
            f" {first['rendering']}, character {first['offset']})"
        )
        mismatches = out["token_mismatches"]
        if mismatches:
            first = mismatches[0]
            out["failures"].append(
                f"{out['tokens_differ']} sample(s) render to different tokens with the tokenizer's"
                f" template (sample {first['sample']}, token {first['position']}:"
                f" {first['bundle']} vs {first['tokenizer']})"
            )
        return out

    def _compare_renders(
        self, theirs: Sandbox, tok: Any, specials: dict[str, str], samples: list[_Sample]
    ) -> dict[str, Any]:
        """Render every sample (training text and generation prompt) with the tokenizer's
        template too; where the text differs, the first differing character and token."""
        renders: list[dict[str, Any]] = []
        tokens: list[dict[str, Any]] = []
        prompt_tokens: list[dict[str, Any]] = []
        differ: set[str] = set()
        for s in samples:
            for rendering, msgs, gen, mine, ids, found in (
                ("training text", s.msgs, False, s.full, s.ids, tokens),
                ("generation prompt", s.msgs[:-1], True, s.prompt, s.prompt_ids, prompt_tokens),
            ):
                try:
                    other = theirs.render(msgs, gen, **specials)
                except RenderError as exc:
                    raise _SampleError(s.source, exc) from None
                if other == mine:
                    continue
                differ.add(s.source)
                renders.append(
                    {"sample": s.source, "rendering": rendering, **_first_difference(mine, other)}
                )
                other_ids = tok.encode(other, add_special_tokens=False).ids
                if other_ids != ids:
                    found.append({"sample": s.source, **_diff_tokens(tok, ids, other_ids)})
        return {
            "renders_differ": bool(renders),
            "samples_differ": len(differ),
            "tokens_differ": len(tokens),
            "render_mismatches": renders[:10],
            "token_mismatches": tokens[:10],
            "prompt_token_mismatches": prompt_tokens[:10],
        }


def _special_ids(tok: Any, specials: dict[str, str]) -> set[int]:
    ids = {tok.token_to_id(t) for t in specials.values()}
    try:
        added = tok.get_added_tokens_decoder()
    except AttributeError:  # older tokenizers
        added = {}
    ids |= {i for i, t in added.items() if getattr(t, "special", False)}
    ids.discard(None)
    ids.discard(tok.token_to_id(specials.get("unk_token", "")))  # unk marks unknown text
    return ids


def _sha256(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class _SampleError(Exception):
    def __init__(self, source: str, error: RenderError) -> None:
        super().__init__(source)
        self.source = source
        self.error = error


@dataclass
class _Sample:
    source: str
    msgs: list[dict[str, Any]]
    full: str
    prompt: str
    bare: str
    ids: list[int]
    prompt_ids: list[int]

    @property
    def prefix_ok(self) -> bool:
        return self.full.startswith(self.prompt) and self.ids[: len(self.prompt_ids)] == (
            self.prompt_ids
        )

    @functools.cached_property
    def answer_gap(self) -> str | None:
        """What the training text holds between the end of the generation prompt and the
        last answer: whitespace when the prompt ends where the answer starts, an assistant
        header when the prompt lacks it; None when the answer does not follow the prompt."""
        if not self.full.startswith(self.prompt):
            return None
        answer = self.msgs[-1]["content"].strip()
        rest = self.full[len(self.prompt) :]
        if rest.lstrip().startswith(answer):
            return rest[: len(rest) - len(rest.lstrip())]
        at = rest.find(answer)
        return rest[:at] if at >= 0 else None

    @property
    def token_divergence(self) -> int:
        pairs = zip(self.ids, self.prompt_ids, strict=False)
        return next((i for i, (a, b) in enumerate(pairs) if a != b), len(self.ids))

    @functools.cached_property
    def missing_answers(self) -> list[int]:
        """Indexes of assistant messages whose content is not found, in order."""
        missing, pos = [], 0
        for i, m in enumerate(self.msgs):
            content = m.get("content")
            if m.get("role") != "assistant" or not isinstance(content, str) or not content.strip():
                continue
            at = self.full.find(content.strip(), pos)
            if at < 0:
                missing.append(i)
            else:
                pos = at + len(content.strip())
        return missing

    def evidence(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rendered": self.full[:4000],
            "token_ids": self.ids[:1024],
            "tokens": len(self.ids),
            "generation_prompt_tail": self.prompt[-200:],
            "generation_prompt_adds": (
                self.prompt[len(self.bare) :][:200] if self.prompt.startswith(self.bare) else None
            ),
            "before_answer": None if self.answer_gap is None else self.answer_gap[:200],
            "prompt_tokens": len(self.prompt_ids),
        }

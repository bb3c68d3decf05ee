"""Memories: write a document into one (adapt), answer questions from one (ask), and the file it lives in.

    from perk_cli.memory import Memory, Reader, adapt_text, adapting_runtime
    runtime, origin = adapting_runtime(checkpoint=Path("runs/qa1"))
    adapt_text(runtime, origin, open("doc.txt").read()).save("mem.safetensors")
    answer, raw = Reader(Memory.load("mem.safetensors")).ask("Where is Mary?")

A memory is the adapted LoRA tensors of one document in one safetensors file with string metadata
(no pickle: loading runs no code). `export_peft` writes a standard PEFT adapter directory. Plain
test-time training (no meta-learning: PEFT's initialisation, a fixed learning rate, no token
weights) is defined here once, for `perk adapt --model` and for the evaluation baseline.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from perk_cli import __version__
from perk_cli.config import InnerLoopSettings, LoraSettings, ModelSettings, PromptSettings, RunConfig
from perk_cli.data.schema import Task, read_tasks
from perk_cli.data.segment import segment_text
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.inner_loop import GroupCallback, InnerResult, run_inner_loop
from perk_cli.engine.lora import copy_into, lora_values
from perk_cli.errors import PerkError
from perk_cli.files import read_text, staged_file
from perk_cli.models.base import load_base
from perk_cli.models.lora import attach_lora, peft_init
from perk_cli.prompts import answer_question, encode_context, encode_question, encode_task
from perk_cli.checkpoint import (Runtime, build_runtime, load_runtime,
                                          shipped_checkpoint)

FORMAT = "perk-memory/1"
# Tokens per accumulation group when writing a memory: the peak memory of `perk adapt` is set by this, not
# by the document, and on a CPU 1,024 is as fast or faster than larger groups (benchmarks/adapt_memory.py).
ADAPT_GROUP_TOKENS = 1024
# The learned step sizes are halved when a memory grows by another document: at full size the new steps
# overwrite what it held (chosen on validation stories: experiments/LOG.md, 2026-12-06).
GROW_STEP_SCALE = 0.5
REQUIRED = ("format", "base_model", "lora", "prompt", "segments", "steps", "perk_version")


# --- the memory file ---------------------------------------------------------------------------

@dataclass
class Memory:
    lora: dict[str, torch.Tensor]  # adapted LoRA tensors by PEFT parameter name
    metadata: dict[str, str]
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # only for a base that exists nowhere else

    def save(self, path: Path) -> None:
        """Atomic write: a temporary file in the same directory, then os.replace."""
        tensors = {f"lora.{k}": v for k, v in self.lora.items()}
        tensors.update({f"base.{k}": v for k, v in self.base.items()})
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with staged_file(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={k: str(v) for k, v in self.metadata.items()})

    @classmethod
    def load(cls, path: Path) -> "Memory":
        path = Path(path)
        if not path.is_file():
            raise PerkError(f"{path}: no such memory file")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                # what the file is, before any tensor is read: a whole model is refused unread
                if metadata.get("format") != FORMAT:
                    raise PerkError(f"{path}: not a perk memory (format {metadata.get('format')!r}, expected "
                                    f"{FORMAT}); write one with `perk adapt`")
                check_metadata(metadata, path)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PerkError(f"{path}: not a readable safetensors memory ({str(exc).splitlines()[0]}); "
                            "is it truncated? re-run `perk adapt`")
        lora = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
        base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
        if not lora:
            raise PerkError(f"{path}: memory holds no LoRA tensors")
        return cls(lora, metadata, base)

    @property
    def lora_settings(self) -> dict:
        return json.loads(self.metadata["lora"])

    @property
    def prompt_settings(self) -> dict:
        return json.loads(self.metadata["prompt"])


def check_metadata(metadata: dict[str, str], path: Path) -> None:
    """A memory's metadata as `Reader` will use it, or one line naming the field: every required field
    present, the LoRA and prompt settings valid JSON of known settings, the counts whole numbers."""
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise PerkError(f"{path}: memory metadata lacks '{missing[0]}'")
    for key, settings in (("lora", LoraSettings), ("prompt", PromptSettings)):
        try:
            settings.model_validate_json(metadata[key])
        except ValueError as exc:  # pydantic's ValidationError is a ValueError: bad JSON or a bad setting
            errors = exc.errors() if hasattr(exc, "errors") else [{"msg": str(exc), "loc": ()}]
            where = ".".join(str(p) for p in errors[0]["loc"])
            raise PerkError(f"{path}: memory metadata '{key}' is not valid ({where + ': ' if where else ''}"
                            f"{errors[0]['msg']}); was the file edited? re-run `perk adapt`")
    for key in ("segments", "steps"):
        if not metadata[key].isdigit() or int(metadata[key]) < 1:
            raise PerkError(f"{path}: memory metadata '{key}' is {metadata[key]!r}, not a whole number >= 1; was the "
                            "file edited? re-run `perk adapt`")


def plain_base_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT-wrapped parameter names to the plain transformers names of the base model."""
    return {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in tensors.items()}


def export_peft(peft_model, memory: Memory, directory: Path) -> None:
    """Write the memory as a standard PEFT adapter directory (config + safetensors weights) that
    `peft.PeftModel.from_pretrained(base, DIR)` loads in any program.

    A memory that carries its base (the tiny preset) also gets `base_model.safetensors` there, in plain
    transformers names, since that base exists nowhere else.
    """
    with lora_values(peft_model, memory.lora):
        peft_model.save_pretrained(str(directory), safe_serialization=True)
    if memory.base:
        base = {k: v.detach().to("cpu").contiguous() for k, v in plain_base_names(memory.base).items()}
        save_file(base, str(Path(directory) / "base_model.safetensors"))


# --- plain test-time training --------------------------------------------------------------------

def plain_inner_settings(steps: int, lr: float, optimizer: str = "adamw", betas: tuple[float, float] = (0.9, 0.95),
                         eps: float = 1e-8) -> InnerLoopSettings:
    """Plain test-time training: a fixed learning rate, no token weights, nothing meta-learned."""
    return InnerLoopSettings(steps=steps, optimizer=optimizer, lr_init=lr, lr_max=None, learn_lr=False, betas=betas,
                             eps=eps, weighting=False, unroll="first-order")


def plain_ttt(runtime: Runtime, context: TokenBatch, init: dict[str, torch.Tensor], lr: float,
              max_tokens_per_group: int | None = None) -> InnerResult:
    """Plain TTT with the runtime's inner loop (K, optimiser) from `init` (`peft_init`), at learning rate `lr`."""
    inner = runtime.config.inner
    settings = plain_inner_settings(inner.steps, lr, inner.optimizer, inner.betas, inner.eps)
    step_sizes = torch.full((inner.steps, len(init)), lr, device=runtime.device)
    return run_inner_loop(runtime.model, init, context.split(max_tokens_per_group), step_sizes, None, settings,
                          differentiable=False)


# --- adapt: a document into a memory -----------------------------------------------------------

@dataclass
class Origin:
    """Where the adapter's meta-parameters came from (recorded in every memory)."""

    kind: str  # "checkpoint" or "plain-ttt"
    path: str
    fingerprint: str
    note: str = ""


def read_document(document: str) -> tuple[str | None, list[str] | None]:
    """(text, None) for a text file or '-' (stdin); (None, segments) for a task record file."""
    if document == "-":
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PerkError("stdin: not valid UTF-8; re-encode the document as UTF-8")
        if not text.strip() or "\x00" in text:
            raise PerkError("stdin: empty or binary input; pipe a UTF-8 text document")
        return text, None
    path = Path(document)
    if path.suffix in (".jsonl", ".json"):
        tasks = read_tasks(path)
        if not tasks:
            raise PerkError(f"{path}: no task records")
        return None, tasks[0].context
    return read_text(path), None


def adapting_runtime(checkpoint: Path | None = None, model: str | None = None, plain_steps: int = 4,
                     plain_lr: float = 1e-3, device: str | None = None, inner_steps: int | None = None,
                     added_lr: float = 1e-3) -> tuple[Runtime, Origin]:
    """The runtime that writes memories: a checkpoint's (taking `inner_steps` if given, those past its
    trained count at `added_lr`), the shipped one when neither a checkpoint nor a model is named, or plain
    TTT on `model` (PEFT's initialisation from seed 0, so the same document gives the same memory)."""
    note = ""
    if checkpoint is None and model is None:
        checkpoint = shipped_checkpoint()
        note = f"using the shipped checkpoint {checkpoint} (pass --checkpoint to use one of your runs)"
    if checkpoint is not None:
        runtime, files = load_runtime(Path(checkpoint), model, device, inner_steps, added_lr)
        return runtime, Origin("checkpoint", str(files.path), files.fingerprint, note)
    config = RunConfig(perk_version=__version__, model=ModelSettings(name=model, device=device or "auto"),
                       lora=LoraSettings(), inner=plain_inner_settings(plain_steps, plain_lr))
    runtime = build_runtime(config)
    copy_into(runtime.model, peft_init(runtime.model, seed=0))
    return runtime, Origin("plain-ttt", "", f"plain-ttt-lr{plain_lr}-k{plain_steps}")


def with_segment_tokens(prompt: PromptSettings, segment_tokens: int | None) -> PromptSettings:
    """The prompt settings with another segment length, validated as the memory's reader will read them."""
    if segment_tokens is None:
        return prompt
    try:
        return PromptSettings.model_validate({**prompt.model_dump(), "segment_tokens": segment_tokens})
    except ValueError as exc:
        message = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise PerkError(f"--segment-tokens {segment_tokens}: {message.lower()}")


def adapt_text(runtime: Runtime, origin: Origin, text: str, segment_tokens: int | None = None,
               max_tokens_per_group: int = ADAPT_GROUP_TOKENS, on_group: GroupCallback | None = None,
               into: Memory | None = None, grow_step_scale: float = GROW_STEP_SCALE) -> Memory:
    """Adapt on a whole document (any length: segments are processed in groups of bounded size); with
    `into`, grow that memory by the document (cut into its memory's segment length)."""
    prompt = with_segment_tokens(PromptSettings(**into.prompt_settings) if into else runtime.config.prompt,
                                 segment_tokens)
    segments = segment_text(text, runtime.tokenizer, prompt.segment_tokens)
    if not segments:
        raise PerkError("the document has no text to adapt on")
    return adapt_segments(runtime, origin, segments, prompt, text, max_tokens_per_group, on_group, into,
                          grow_step_scale)


def check_same_writer(memory: Memory, runtime: Runtime, origin: Origin, source: str = "the memory") -> None:
    """A memory only grows (or is served) under the checkpoint and base that wrote it."""
    if memory.metadata.get("checkpoint_fingerprint") != origin.fingerprint:
        raise PerkError(f"{source} was written by another checkpoint (fingerprint "
                        f"{memory.metadata.get('checkpoint_fingerprint')}, this one {origin.fingerprint}); use the "
                        f"checkpoint that wrote it ({memory.metadata.get('checkpoint') or 'plain test-time training'})")
    if memory.metadata.get("base_model") != runtime.config.model.name:
        raise PerkError(f"{source} was written over base {memory.metadata.get('base_model')}, not "
                        f"{runtime.config.model.name}")


def adapt_segments(runtime: Runtime, origin: Origin, segments: list[str], prompt: PromptSettings | None = None,
                   text: str | None = None, max_tokens_per_group: int = ADAPT_GROUP_TOKENS,
                   on_group: GroupCallback | None = None, into: Memory | None = None,
                   grow_step_scale: float = GROW_STEP_SCALE) -> Memory:
    """A memory of `segments`; with `into`, that memory grown by them: the new segments continue its
    segment numbering (doc_N, doc_N+1, ...) and the inner steps start from its LoRA, at `grow_step_scale`
    times the learned step sizes, so what it holds is not encoded again."""
    prompt = prompt or runtime.config.prompt
    held = 0
    if into is not None:
        check_same_writer(into, runtime, origin)
        held = int(into.metadata["segments"])
        prompt = PromptSettings(**into.prompt_settings)
    context = encode_context(runtime.tokenizer, segments, prompt, doc_ids=list(range(held, held + len(segments))),
                             max_len=runtime.max_positions)
    start = {name: value.to(runtime.device) for name, value in into.lora.items()} if into is not None else None
    result = runtime.meta.adapt(context.to(runtime.device), on_group=on_group, max_tokens_per_group=max_tokens_per_group,
                                start=start, step_scale=grow_step_scale if into is not None else 1.0)
    bad = next((step for step, loss in enumerate(result.losses) if not math.isfinite(loss)), None)
    if bad is not None or not all(bool(torch.isfinite(v).all()) for v in result.params.values()):
        where = f"the inner loss became {result.losses[bad]} at step {bad + 1}" if bad is not None else \
            "the adapted LoRA holds non-finite values"
        raise PerkError(f"adapting diverged ({where}); no memory was written: lower the learning rate (--lr) "
                        "or the number of steps (--steps)")
    document = text if text is not None else "\n".join(segments)
    digest = hashlib.sha256(document.encode("utf-8")).hexdigest()
    if into is not None:  # a grown memory's hash chains its documents' hashes, in the order they were added
        digest = hashlib.sha256((into.metadata["document_sha256"] + digest).encode()).hexdigest()
    state = runtime.state_tensors()
    base = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    metadata = {
        "format": FORMAT,
        "perk_version": __version__,
        "base_model": runtime.config.model.name,
        "tokenizer": runtime.config.model.name,
        "lora": runtime.config.lora.model_dump_json(),
        "prompt": prompt.model_dump_json(),
        "origin": origin.kind,
        "checkpoint": origin.path,
        "checkpoint_fingerprint": origin.fingerprint,
        "document_sha256": digest,
        "documents": str(int(into.metadata.get("documents", "1")) + 1 if into is not None else 1),
        "segments": str(held + len(segments)),
        "context_tokens": str(context.n_tokens + (int(into.metadata.get("context_tokens", "0")) if into else 0)),
        "steps": str(runtime.config.inner.steps),
        "inner": runtime.config.inner.model_dump_json(),
        **({"grow_step_scale": f"{grow_step_scale:g}"} if into is not None else {}),
        "inner_losses": json.dumps([round(x, 6) for x in result.losses]),
        "final_inner_loss": f"{result.losses[-1]:.6f}",
    }
    return Memory(result.params, metadata, base)


@torch.no_grad()
def perk_answer(runtime: Runtime, task: Task, budget: int, max_tokens_per_group: int | None = None,
                lora: dict[str, torch.Tensor] | None = None) -> tuple[str, str, float]:
    """(answer, raw, answer loss) of a task from a fresh memory of its context: PERK's, or the one
    `lora` holds already (plain TTT's). What validation and `perk eval` score."""
    encoded = encode_task(runtime.tokenizer, task, runtime.config.prompt, max_len=runtime.max_positions)
    encoded = encoded.to(runtime.device)
    if lora is None:
        lora = runtime.meta.adapt(encoded.context, max_tokens_per_group=max_tokens_per_group).params
    loss = float(runtime.meta.answer_loss(lora, encoded.question, runtime.config.train.answer_weight))
    answer, raw = answer_question(runtime.model, runtime.tokenizer, task.question, len(task.context),
                                  runtime.config.prompt, lora=lora, max_new_tokens=budget)
    return answer, raw, loss


@torch.no_grad()
def perk_forced(runtime: Runtime, task: Task) -> tuple[bool, float, dict[str, torch.Tensor]]:
    """(teacher-forced exact match, answer loss, the memory) of a task from a fresh PERK memory of its
    context, with no decoding: what `--eval-forced` validation scores."""
    encoded = encode_task(runtime.tokenizer, task, runtime.config.prompt, max_len=runtime.max_positions)
    encoded = encoded.to(runtime.device)
    lora = runtime.meta.adapt(encoded.context).params
    loss, exact = runtime.meta.answer_scores(lora, encoded.question, runtime.config.train.answer_weight)
    return bool(exact.all()), float(loss), lora


# --- ask: answers from a memory ------------------------------------------------------------------

def check_question(tokenizer, question: str, n_segments: int, prompt: PromptSettings, max_positions: int,
                   max_new_tokens: int | None = None) -> None:
    """One line for a question the model cannot answer: empty, or with its answer budget longer than the
    model's positions."""
    if not question.strip():
        raise PerkError("the question is empty; ask something about the document")
    budget = max_new_tokens or prompt.max_answer_tokens
    tokens = encode_question(tokenizer, question, n_segments, prompt).input_ids.shape[1]
    if tokens + budget > max_positions:
        raise PerkError(f"the question takes {tokens} tokens; with {budget} to answer that exceeds the model's "
                        f"{max_positions} positions: shorten the question (the document belongs in the memory)")


class Reader:
    """A memory's base model with the memory's LoRA in place, answering questions greedily."""

    def __init__(self, memory: Memory, model: str | None = None, device: str = "auto", source: str = "memory"):
        self.memory = memory
        self.prompt = PromptSettings(**memory.prompt_settings)
        base, self.tokenizer = load_base(ModelSettings(name=model or memory.metadata["base_model"], device=device))
        self.model = attach_lora(base, LoraSettings(**memory.lora_settings))
        params = dict(self.model.named_parameters())
        values = {**memory.lora, **memory.base}
        for name, value in values.items():
            if name not in params or params[name].shape != value.shape:
                got = tuple(params[name].shape) if name in params else "absent"
                raise PerkError(f"{source}: made for a different base model or LoRA shape ({name}: memory "
                                f"{tuple(value.shape)}, model {got}); pass --model for the base it was made with")
        missing = [n for n in params if ".lora_" in n and n not in memory.lora]
        if missing:
            raise PerkError(f"{source}: made for a different LoRA layout (no tensor for {missing[0]})")
        copy_into(self.model, values)
        self.n_segments = int(memory.metadata["segments"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int:
        config = self.model.config
        return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 2048))

    def check_question(self, question: str, max_new_tokens: int | None = None) -> None:
        check_question(self.tokenizer, question, self.n_segments, self.prompt, self.max_positions, max_new_tokens)

    def ask(self, question: str, max_new_tokens: int | None = None) -> tuple[str, str]:
        """(answer, raw generated text)."""
        self.check_question(question, max_new_tokens)
        return answer_question(self.model, self.tokenizer, question, self.n_segments, self.prompt,
                               max_new_tokens=max_new_tokens)


def load_reader(path: Path, model: str | None = None, device: str = "auto") -> Reader:
    return Reader(Memory.load(path), model=model, device=device, source=str(path))

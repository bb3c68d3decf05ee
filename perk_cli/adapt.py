"""Write a document into a memory: segment it, run the checkpoint's inner loop with no graph kept, and
return the adapted LoRA with its metadata.

    from perk_cli.adapt import load_adapter, adapt_text
    runtime, origin = load_adapter(checkpoint=Path("runs/qa1/best"))
    memory = adapt_text(runtime, origin, open("doc.txt").read())
    memory.save("mem.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from perk_cli import __version__
from perk_cli.checkpoint import DEFAULT_RUNS, latest_checkpoint, read_checkpoint
from perk_cli.config import InnerLoopSettings, LoraSettings, ModelSettings, RunConfig
from perk_cli.data.schema import read_tasks, read_text
from perk_cli.data.segment import segment_text
from perk_cli.encoding import encode_context
from perk_cli.engine.inner_loop import GroupCallback
from perk_cli.errors import PerkError
from perk_cli.memory import FORMAT, Memory
from perk_cli.runtime import Runtime, build_runtime


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


def plain_ttt_config(model: str, steps: int = 4, lr: float = 1e-3, optimizer: str = "adamw",
                     lora: LoraSettings | None = None, device: str = "auto") -> RunConfig:
    """Plain test-time training: zero-B LoRA, a fixed learning rate, no weighting, no meta-learning."""
    return RunConfig(
        perk_version=__version__,
        model=ModelSettings(name=model, device=device),
        lora=lora or LoraSettings(),
        inner=InnerLoopSettings(steps=steps, optimizer=optimizer, lr_init=lr, lr_max=None, learn_lr=False,
                                weighting=False, unroll="first-order"),
    )


def load_adapter(checkpoint: Path | None = None, model: str | None = None, runs: Path = DEFAULT_RUNS,
                 plain_steps: int = 4, plain_lr: float = 1e-3, device: str | None = None) -> tuple[Runtime, Origin]:
    """The adapter for a checkpoint, the latest one under `runs`, or plain TTT on `model`."""
    if checkpoint is None and model is None:
        checkpoint = latest_checkpoint(runs)
        if checkpoint is None:
            raise PerkError(f"no checkpoint under {runs}/: pass --checkpoint DIR, or --model NAME for plain "
                            "test-time training (no meta-learning)")
        note = f"using the most recent checkpoint {checkpoint}"
    else:
        note = ""
    if checkpoint is not None:
        files = read_checkpoint(Path(checkpoint))
        config = files.config
        overrides = {k: v for k, v in (("name", model), ("device", device)) if v is not None}
        if overrides:
            config = config.model_copy(update={"model": config.model.model_copy(update=overrides)})
        runtime = build_runtime(config, files.tensors, source=str(files.path))
        return runtime, Origin("checkpoint", str(files.path), files.fingerprint, note)
    config = plain_ttt_config(model, steps=plain_steps, lr=plain_lr, device=device or "auto")
    return build_runtime(config), Origin("plain-ttt", "", f"plain-ttt-lr{plain_lr}-k{plain_steps}")


def adapt_text(runtime: Runtime, origin: Origin, text: str, segment_tokens: int | None = None,
               max_tokens_per_step: int = 4096, on_group: GroupCallback | None = None) -> Memory:
    """Adapt on a whole document (any length: segments are processed in groups of bounded size)."""
    prompt = runtime.config.prompt
    if segment_tokens is not None:
        prompt = prompt.model_copy(update={"segment_tokens": segment_tokens})
    segments = segment_text(text, runtime.tokenizer, prompt.segment_tokens)
    if not segments:
        raise PerkError("the document has no text to adapt on")
    return adapt_segments(runtime, origin, segments, prompt, text, max_tokens_per_step, on_group)


def adapt_segments(runtime: Runtime, origin: Origin, segments: list[str], prompt=None, text: str | None = None,
                   max_tokens_per_step: int = 4096, on_group: GroupCallback | None = None) -> Memory:
    prompt = prompt or runtime.config.prompt
    context = encode_context(runtime.tokenizer, segments, prompt, max_len=runtime.max_positions)
    result = runtime.meta.adapt(context.to(runtime.device), on_group=on_group, max_tokens_per_group=max_tokens_per_step)
    document = text if text is not None else "\n".join(segments)
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
        "document_sha256": hashlib.sha256(document.encode("utf-8")).hexdigest(),
        "segments": str(len(segments)),
        "context_tokens": str(context.n_tokens),
        "steps": str(runtime.config.inner.steps),
        "inner_losses": json.dumps([round(x, 6) for x in result.losses]),
        "final_inner_loss": f"{result.losses[-1]:.6f}",
    }
    return Memory(result.params, metadata, base)

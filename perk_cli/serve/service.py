"""What `perk serve` holds: one loaded checkpoint, the memories it serves, and its adaptation jobs.

    service = Service(Path("perk_cli/shipped/qa1-reader"), MemoryStore(Path("memories")))
    job = service.submit("Mary went to the kitchen. ...")         # adapts in the background
    service.ask(job.memory, "Where is Mary?")                        # {"answer", "raw", "seconds", ...}

The base is loaded once. Two models share its frozen weights: the checkpoint's runtime, which writes
memories (the inner loop, one job at a time on a worker thread), and a reader that answers; a memory is
put on the reader by copying its LoRA values in (`copy_into`), never by loading a model. So asks are
answered while a job adapts (both compete for the CPU: slower, not blocked). Recently used memories stay
in RAM (LRU, reloaded when their file changes). Answers are `perk ask`'s, token for token: the same
prompt settings (the memory's), the same greedy decoding (`answer_question`).
"""

from __future__ import annotations

import copy
import queue
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from perk_cli.config import PromptSettings
from perk_cli.engine.lora import copy_into
from perk_cli.errors import PerkError
from perk_cli.memory import Memory, Origin, adapt_text, check_question, check_same_writer
from perk_cli.prompts import answer_question
from perk_cli.serve.store import MemoryStore
from perk_cli.checkpoint import load_runtime


MAX_JOBS_KEPT = 1000


class Incompatible(PerkError):
    """A memory written by another checkpoint or over another base: it cannot be read here."""


class Busy(PerkError):
    """The memory exists already, or a job is writing it."""


@dataclass
class Job:
    id: str
    memory: str
    kind: str  # "adapt" or "append"
    status: str = "queued"  # queued | running | done | failed
    progress: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float | None = None

    def view(self) -> dict:
        return {"job": self.id, "memory": self.memory, "kind": self.kind, "status": self.status,
                "progress": round(self.progress, 4), **({"error": self.error} if self.error else {}),
                **({"seconds": round(self.seconds, 3)} if self.seconds is not None else {})}


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A second copy of a PEFT model that shares every frozen weight and buffer with it (no second base in
    memory) and has LoRA tensors of its own."""
    memo = {id(p): p for name, p in model.named_parameters() if ".lora_" not in name}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


class Service:
    def __init__(self, checkpoint: Path, store: MemoryStore, device: str | None = None, cache_size: int = 64,
                 max_text_chars: int = 2_000_000) -> None:
        self.runtime, files = load_runtime(checkpoint, device=device)
        self.origin = Origin("checkpoint", str(files.path), files.fingerprint)
        self.store = store
        self.reader = shared_copy(self.runtime.model).eval()
        self.reader_tokenizer = copy.deepcopy(self.runtime.tokenizer)  # fast tokenizers are not thread-safe
        self.cache_size, self.max_text_chars = cache_size, max_text_chars
        self._cache: OrderedDict[str, tuple[tuple[int, int], Memory]] = OrderedDict()
        self._ask_lock, self._cache_lock, self._jobs_lock = threading.Lock(), threading.Lock(), threading.Lock()
        # one job at a time, on a daemon thread: stopping the server does not wait for a job (its staged
        # file is removed when the store is next opened)
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="perk-adapt", daemon=True).start()
        self.jobs: dict[str, Job] = {}
        self._pending: set[str] = set()  # memory ids a queued or running job will write

    # --- memories ---------------------------------------------------------------------------------

    def memory(self, memory_id: str) -> Memory:
        """The memory, from RAM when its file is unchanged since it was read (LRU of `cache_size`)."""
        path = self.store.existing(memory_id)
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            cached = self._cache.get(memory_id)
            if cached is not None and cached[0] == stamp:
                self._cache.move_to_end(memory_id)
                return cached[1]
        memory = Memory.load(path)
        with self._cache_lock:
            self._cache[memory_id] = (stamp, memory)
            self._cache.move_to_end(memory_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return memory

    def check_compatible(self, memory: Memory, memory_id: str) -> None:
        try:
            check_same_writer(memory, self.runtime, self.origin, f"memory {memory_id}")
        except PerkError as exc:
            raise Incompatible(str(exc))
        names = {name for name, _ in self.reader.named_parameters() if ".lora_" in name}
        if set(memory.lora) != names:
            raise Incompatible(f"memory {memory_id} has another LoRA layout than this checkpoint's")

    def describe(self, memory_id: str) -> dict:
        metadata = self.store.metadata(memory_id)
        compatible = metadata.get("checkpoint_fingerprint") == self.origin.fingerprint
        keep = ("base_model", "checkpoint", "checkpoint_fingerprint", "segments", "context_tokens", "documents",
                "document_sha256", "steps", "final_inner_loss", "perk_version")
        return {"id": memory_id, **{k: metadata[k] for k in keep if k in metadata}, "compatible": compatible}

    def delete(self, memory_id: str) -> None:
        with self._jobs_lock:
            if memory_id in self._pending:
                raise Busy(f"memory {memory_id}: a job is writing it; delete it when the job is done")
        self.store.delete(memory_id)
        with self._cache_lock:
            self._cache.pop(memory_id, None)

    # --- asking -----------------------------------------------------------------------------------

    @torch.no_grad()
    def ask(self, memory_id: str, question: str, max_new_tokens: int | None = None) -> dict:
        started = time.perf_counter()
        memory = self.memory(memory_id)
        self.check_compatible(memory, memory_id)
        prompt = PromptSettings(**memory.prompt_settings)
        n_segments = int(memory.metadata["segments"])
        with self._ask_lock:  # one reader: a memory's values stay in place for its whole answer
            check_question(self.reader_tokenizer, question, n_segments, prompt, self.runtime.max_positions,
                           max_new_tokens)
            copy_into(self.reader, memory.lora)
            answer, raw = answer_question(self.reader, self.reader_tokenizer, question, n_segments, prompt,
                                          max_new_tokens=max_new_tokens)
        return {"memory": memory_id, "answer": answer, "raw": raw, "seconds": round(time.perf_counter() - started, 4)}

    # --- adaptation jobs --------------------------------------------------------------------------

    def submit(self, text: str, memory_id: str | None = None, append: bool = False) -> Job:
        """Queue the adaptation of `text` into a new memory (`memory_id` or a fresh one), or with `append`
        into the existing `memory_id`; returns the job at once."""
        if not text.strip():
            raise PerkError("text: empty; send the document to remember")
        if len(text) > self.max_text_chars:
            raise PerkError(f"text: {len(text):,} characters, over this server's limit of {self.max_text_chars:,} "
                            "(perk serve --max-text-chars)")
        with self._jobs_lock:
            if append:
                self.store.existing(memory_id)
            else:
                memory_id = memory_id or self.store.new_id()
                if self.store.path(memory_id).exists():
                    raise Busy(f"memory {memory_id}: exists already; choose another name, or append to it")
            if memory_id in self._pending:
                raise Busy(f"memory {memory_id}: a job is writing it already; wait for it (GET /v1/jobs/...)")
            job = Job(id=f"j-{secrets.token_hex(6)}", memory=memory_id, kind="append" if append else "adapt")
            self.jobs[job.id] = job
            while len(self.jobs) > MAX_JOBS_KEPT:  # a long-running server keeps the most recent jobs only
                del self.jobs[next(iter(self.jobs))]
            self._pending.add(memory_id)
        self._queue.put((job, text))
        return job

    def _work(self) -> None:
        while True:
            job, text = self._queue.get()
            self._run(job, text)

    def _run(self, job: Job, text: str) -> None:
        job.status, started = "running", time.perf_counter()
        steps = self.runtime.config.inner.steps

        def on_group(step: int, group: int, n_groups: int, loss: float) -> None:
            job.progress = (step * n_groups + group + 1) / (steps * n_groups)

        try:
            into = None
            if job.kind == "append":
                into = self.memory(job.memory)
                self.check_compatible(into, job.memory)
            memory = adapt_text(self.runtime, self.origin, text, on_group=on_group, into=into)
            memory.save(self.store.path(job.memory))  # staged: a kill here leaves no partial memory
            job.status, job.progress = "done", 1.0
        except PerkError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # a bug: the job fails with its reason; the server keeps serving
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            job.seconds = time.perf_counter() - started
            with self._jobs_lock:
                self._pending.discard(job.memory)

    def running(self) -> int:
        return sum(job.status in ("queued", "running") for job in self.jobs.values())

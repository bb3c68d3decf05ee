"""`perk adapt`, `perk ask` and `perk serve`: memories written, read and served."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from perk_cli.cli.common import (app, out, err, json_option, quiet_option, progress, check_device, check_lr,
                                 check_writable)
from perk_cli.errors import PerkError


@app.command()
def adapt(
    document: str = typer.Argument(..., help="Text file, '-' for stdin, or a task file (.jsonl: its first record)."),
    output: Optional[Path] = typer.Option(None, "-o", "--out", help="Memory file to write (.safetensors) "
                                          r"\[required, but with --into: that file]."),
    into: Optional[Path] = typer.Option(None, help="Grow this memory by the document: its new segments continue the "
                                        "memory's numbering and the inner steps start from what it holds (nothing "
                                        "it holds is read again)."),
    grow_step_scale: float = typer.Option(0.5, help="With --into: the learned step sizes times this (at 1 the new "
                                          "document overwrites what the memory held; 0.5 was chosen on validation "
                                          "stories)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint or run directory from meta-train, or 'shipped' "
                                              r"\[default: the shipped one; "
                                              "with --into, the one that wrote the memory]."),
    model: Optional[str] = typer.Option(None, help="Base model for plain test-time training (no checkpoint), "
                                        "or to override the checkpoint's base path."),
    segment_tokens: Optional[int] = typer.Option(None, help=r"Max tokens per segment \[default: the checkpoint's]."),
    max_tokens_per_group: int = typer.Option(1024, "--max-tokens-per-group", min=1,
                                             help="Tokens per accumulation group: sets peak memory, which then "
                                             "grows only slowly with the document."),
    steps: Optional[int] = typer.Option(None, min=1, help="Inner steps: plain TTT's [default: 4]; with a checkpoint, "
                                        "steps at test time in place of its trained count (more can help documents "
                                        "far longer than it trained on), those past it at --lr."),
    lr: float = typer.Option(1e-3, help="Plain TTT's fixed learning rate; with a checkpoint, the size of "
                             "the steps --steps adds past its trained count."),
    peft: Optional[Path] = typer.Option(None, help="Also write a PEFT adapter directory here."),
    device: Optional[str] = typer.Option(None, help=r"auto | cpu | cuda | mps \[default: the checkpoint's, else auto]."),
    json_output: bool = json_option("the memory's metadata"),
    quiet: bool = quiet_option(),
) -> None:
    """Write a document into a memory file by test-time gradient steps.

    Example: perk adapt doc.txt -o mem.safetensors --checkpoint runs/qa1   (perk adapt more.txt --into mem.safetensors)
    """
    from perk_cli.config import PromptSettings
    from perk_cli.memory import (Memory, adapt_segments, adapt_text, adapting_runtime, export_peft, read_document,
                                 with_segment_tokens)

    grown = Memory.load(into) if into is not None else None
    if output is None and into is None:
        raise PerkError("--out: missing; name the memory file to write (-o mem.safetensors), or grow one with --into")
    output = output if output is not None else into
    if grown is not None and checkpoint is None and model is None:
        if grown.metadata.get("origin") != "checkpoint" or not grown.metadata.get("checkpoint"):
            raise PerkError(f"--into {into}: written by plain test-time training; pass the --model (and --lr, "
                            "--steps) it was written with")
        checkpoint = Path(grown.metadata["checkpoint"])
        if not checkpoint.exists():
            raise PerkError(f"--into {into}: the checkpoint that wrote it, {checkpoint}, is not here; pass "
                            "--checkpoint with that checkpoint")
    if output.exists() and output.is_dir():
        raise PerkError(f"--out {output}: is a directory; give a file name like mem.safetensors")
    if document != "-" and output.exists() and Path(document).exists() and output.samefile(document):
        raise PerkError(f"--out {output}: is the document itself; the memory would replace it: give another file name")
    check_device(device)
    check_lr(lr, "--lr")
    check_lr(grow_step_scale, "--grow-step-scale", "a scale")
    with_segment_tokens(PromptSettings(), segment_tokens)  # what ask would refuse, refused before any work
    check_writable(output, "--out")
    text, segments = read_document(document)
    runtime, origin = adapting_runtime(checkpoint, model, plain_steps=steps or 4, plain_lr=lr, device=device,
                                       inner_steps=steps, added_lr=lr)
    if origin.note and not quiet:
        err.print(origin.note, markup=False)
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("adapting", total=None)

        def on_group(step: int, group: int, n_groups: int, loss: float) -> None:
            bar.update(handle, completed=step * n_groups + group + 1, total=runtime.config.inner.steps * n_groups,
                       description=f"adapting  step {step + 1}  loss {loss:.3f}")

        if segments is not None:
            memory = adapt_segments(runtime, origin, segments, max_tokens_per_group=max_tokens_per_group,
                                    on_group=on_group, into=grown, grow_step_scale=grow_step_scale)
        else:
            memory = adapt_text(runtime, origin, text, segment_tokens, max_tokens_per_group, on_group, into=grown,
                                grow_step_scale=grow_step_scale)
    memory.save(output)
    if peft is not None:
        export_peft(runtime.model, memory, peft)
    if json_output:
        out.print_json(json.dumps({"memory": str(output), **memory.metadata}))
    elif not quiet:
        out.print(f"wrote {output}: {memory.metadata['segments']} segments, {memory.metadata['context_tokens']} "
                  f"tokens, inner loss {memory.metadata['final_inner_loss']} before the last inner step "
                  "(the document's cross-entropy, token-weighted)"
                  + (f"; PEFT adapter in {peft}" if peft else ""))


@app.command()
def ask(
    memory: str = typer.Argument(..., help="Memory file written by `perk adapt` (with --server: a memory id)."),
    questions: Optional[list[str]] = typer.Argument(None, help="Questions (or one per line on stdin)."),
    model: Optional[str] = typer.Option(None, help="Base model path, overriding the one the memory names."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=r"Decoding budget \[default: the memory's "
                                                 "max_answer_tokens]."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Ask questions at a prompt."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    server: Optional[str] = typer.Option(None, help="Ask a running `perk serve` at this URL instead (MEMORY is "
                                         "then a memory id there); starts in well under a second."),
    token: Optional[str] = typer.Option(None, envvar="PERK_TOKEN", help="Bearer token of --server."),
    json_output: bool = typer.Option(False, "--json", help="Print {question, answer, raw} per question."),
) -> None:
    """Answer questions from a memory, without re-reading the document.

    Example: perk ask mem.safetensors "Where is Mary?"   (perk ask --server http://127.0.0.1:8765 m-1a2b "Where is Mary?")
    """
    check_device(device)
    if questions and not all(q.strip() for q in questions):
        raise PerkError("question: empty; ask something about the document")
    if not questions and not interactive:
        questions = _stdin_questions()
    if server is not None:
        from perk_cli.serve.client import ask as ask_server  # the standard library only: no torch

        def answer_from(question: str) -> tuple[str, str]:
            reply = ask_server(server, memory, question, max_new_tokens, token)
            return reply["answer"], reply["raw"]
    else:
        from perk_cli.memory import load_reader

        reader = load_reader(Path(memory), model=model, device=device)

        def answer_from(question: str) -> tuple[str, str]:
            return reader.ask(question, max_new_tokens)

    def answer(question: str) -> None:
        text, raw = answer_from(question)
        if json_output:
            out.print_json(json.dumps({"question": question, "answer": text, "raw": raw}))
        else:
            out.print(text, markup=False, highlight=False)

    if interactive:
        while True:
            try:
                question = input("question> ").strip()
            except EOFError:
                return
            if question:
                try:
                    answer(question)
                except PerkError as exc:  # one bad question does not end the session
                    err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return
    for question in questions:
        answer(question)


def _stdin_questions() -> list[str]:
    """Questions one a line on stdin (UTF-8), or one line saying why there are none."""
    if sys.stdin.isatty():
        raise PerkError("no question: pass questions as arguments, on stdin, or use --interactive")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PerkError(f"stdin: line {line} is not valid UTF-8 (byte offset {exc.start}); send UTF-8 questions")
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise PerkError("stdin: no question (every line was empty); one question a line")
    return questions


@app.command()
def serve(
    checkpoint: str = typer.Option("shipped", help="Checkpoint or run directory whose memories it writes and reads."),
    store: Path = typer.Option(Path("memories"), help="Folder of memory files (.safetensors) it serves and writes."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8765, min=0, max=65535, help="Port (0: any free one)."),
    token: Optional[str] = typer.Option(None, envvar="PERK_TOKEN", help="Bearer token every request must carry."),
    device: Optional[str] = typer.Option(None, help=r"auto | cpu | cuda | mps \[default: the checkpoint's]."),
    max_body_mb: float = typer.Option(8.0, min=0.001, help="Largest request body, in MB."),
    max_text_chars: int = typer.Option(2_000_000, min=1, help="Longest document one request may send."),
    cache_size: int = typer.Option(64, min=1, help="Memories kept in RAM (least recently used go first)."),
) -> None:
    """Serve memories over HTTP: one loaded model, many memories, answers without reloading anything.

    Routes: POST /v1/memories, POST /v1/memories/ID/append, GET /v1/jobs/JOB, POST /v1/memories/ID/ask, GET /v1/memories, GET and DELETE /v1/memories/ID, GET /health; OpenAPI at /docs.

    Example: perk serve --store memories/ --port 8765
    """
    import ipaddress
    import socket

    check_device(device)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise PerkError(f"--host {host}: not a loopback address; anyone who can reach it could read the memories: "
                        "pass --token (or PERK_TOKEN), or bind 127.0.0.1")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PerkError(f"--port {port}: cannot bind {host}:{port} ({exc.strerror or exc}); choose another --port")
    import uvicorn

    from perk_cli.serve.app import create_app
    from perk_cli.serve.service import Service
    from perk_cli.serve.store import MemoryStore

    memories = MemoryStore(store)
    service = Service(Path(checkpoint), memories, device=device, cache_size=cache_size, max_text_chars=max_text_chars)
    application = create_app(service, token, int(max_body_mb * (1 << 20)))
    config = uvicorn.Config(application, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    original = server.startup

    async def announce(*args, **kwargs):  # the real port once bound (--port 0), then one line
        await original(*args, **kwargs)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        err.print(f"serving {service.origin.path} with {len(memories.ids())} memories from {store} at "
                  f"http://{host}:{bound} (OpenAPI at /docs); Ctrl-C stops", markup=False, soft_wrap=True)

    server.startup = announce
    server.run()

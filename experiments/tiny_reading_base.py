"""Stage 1, the in-domain route: pretrain a small GPT-2 from scratch until it answers from its prompt.

    python experiments/tiny_reading_base.py --out runs/tiny-reader --minutes 7 --device cuda   # one GPU
    python experiments/tiny_reading_base.py --out runs/tiny-reader --steps 20 --batch 8          # a CPU smoke run

The tiny preset's tokenizer (made locally, vocab 2,048), a GPT-2 of `--layers` x `--width` with
`--positions` positions (default 4 x 256, 512: 3.7M parameters, 7 MB in float16), trained on the
project's in-context format exactly as the in-context baseline reads it (the context's segments one
a line, then `You have memorized N documents.\\n{question}\\nAnswer:`, then ` {answer}` + eos). The
loss is the answer tokens' cross-entropy plus `--lm-weight` x the next-token loss of the whole
sequence (the language the inner loop will later write into a LoRA).

Tasks are generated on the fly by `--workers` processes with the `perk prepare` generators (qa1, qa2
and records recall, clean and hidden in filler up to 256 tokens; seeds from 10,000 on, never those of
the held-out sets, which use 9,000-9,099): a replay buffer per (family, length) grows as they arrive
and each batch is drawn from one of them (one length a batch, little padding). Every `--eval-every`
seconds the held-out EM per set is logged (teacher-forced: every answer token and the eos the argmax,
`em`, a lower bound of greedy decoding's, which also stops at a newline; `em_without_eos`, the
answer tokens alone, an upper bound up to tokenisation) and the base is saved, so a run stopped at any
moment leaves its last save. The gate itself is measured afterwards with the package's own decoding:
`perk reading-base --out DIR --evaluate TASKS` (DIR/model is what this writes).

Writes <out>/model (config.json, model.safetensors in float16, tokenizer) and <out>/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# (family, subtask, facts, length, mixture weight). length None: a clean story, no filler.
TRAIN_SETS = [
    ("babi", "qa1", 4, None, 0.10), ("babi", "qa1", 4, 64, 0.10), ("babi", "qa1", 4, 128, 0.15),
    ("babi", "qa1", 4, 256, 0.15),
    ("babi", "qa2", None, None, 0.08), ("babi", "qa2", None, 128, 0.10), ("babi", "qa2", None, 256, 0.07),
    ("records", "recall", None, 64, 0.08), ("records", "recall", None, 128, 0.10), ("records", "recall", None, 256, 0.07),
]
HELD_OUT = [("babi", "qa1", 4, 128), ("babi", "qa1", 4, 256), ("babi", "qa2", None, 128), ("records", "recall", None, 128)]
HELD_OUT_SEED = 9000
TRAIN_SEED = 10_000

_tokenizer = None


def _worker_init() -> None:
    global _tokenizer
    torch.set_num_threads(1)
    from perk_cli.models.tiny import build_tiny_tokenizer

    _tokenizer = build_tiny_tokenizer()


def encode_sets(spec: tuple, n: int, seed: int, tokenizer=None) -> list[tuple[list[int], list[bool]]]:
    """n tasks of one (family, subtask, facts, length) as (ids, answer-token mask) in the in-context format."""
    from perk_cli.config import GENERATOR_LAYOUT, PrepareSettings, PromptSettings
    from perk_cli.prepare import _generate
    from perk_cli.prompts import encode_question

    tokenizer = tokenizer or _tokenizer
    task, subtask, facts, length = spec[:4]
    settings = PrepareSettings(task=task, subtask=subtask, facts=facts, length=length, segment_tokens=64,
                               train=n, validation=0, test=0, seed=seed, out="-", **GENERATOR_LAYOUT)
    rows, prompt = [], PromptSettings()
    for t in _generate(settings, tokenizer, None)["train"]:
        batch = encode_question(tokenizer, t.question, len(t.context), prompt, t.answer, t.support, context=t.context)
        rows.append((batch.input_ids[0].tolist(), batch.target_mask[0].tolist()))
    return rows


def collate(rows: list[tuple[list[int], list[bool]]], pad: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded (ids, attention mask, answer-token mask) on `device`."""
    from perk_cli.prompts import pad_rows

    batch = pad_rows(rows, pad)
    return batch.input_ids.to(device), batch.attention_mask.to(device), batch.target_mask.to(device)


def losses(model, ids, attention, answer, eos_id: int) -> tuple[torch.Tensor, ...]:
    """(answer cross-entropy, whole-sequence next-token loss, per-row hits with the eos, per-row hits
    without it). A hit is every answer token the argmax given the ones before (teacher forcing); greedy
    decoding's exact match lies between the two: it also stops at a newline, not only at eos. As in
decoding, eos cannot be the first answer token."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    targets, ans, real = ids[:, 1:], answer[:, 1:], attention[:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    answer_ce = (ce * ans).sum() / ans.sum().clamp(min=1)
    lm = (ce * real).sum() / real.sum().clamp(min=1)
    # Greedy decoding never ends an answer at its first token (prompts.generate_text): nor does this.
    first = ans & ~torch.nn.functional.pad(ans[:, :-1], (1, 0))
    opening = logits.detach().clone()
    opening[..., eos_id] = float("-inf")
    right = torch.where(first, opening.argmax(-1), logits.argmax(-1)) == targets
    with_eos = (right | ~ans).all(dim=1)
    without_eos = (right | ~(ans & (targets != eos_id))).all(dim=1)
    return answer_ce, lm, with_eos, without_eos


def build_model(tokenizer, layers: int, width: int, heads: int, positions: int):
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def save(model, tokenizer, directory: Path) -> None:
    """A transformers directory `--model DIR` loads; weights in float16 (a few MB), written atomically."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # tied to the embeddings
    save_file(state, str(directory / "model.tmp"), metadata={"format": "pt"})
    os.replace(directory / "model.tmp", directory / "model.safetensors")
    config = model.config.to_dict()
    config.pop("_attn_implementation_autoset", None)
    config["dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(directory))


@torch.no_grad()
def held_out_em(model, held: dict, pad: int, device, batch: int) -> dict:
    model.eval()
    scores = {}
    for name, rows in held.items():
        hits, loose, loss = 0, 0, 0.0
        for i in range(0, len(rows), batch):
            ids, attention, answer = collate(rows[i: i + batch], pad, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                answer_ce, _, with_eos, without_eos = losses(model, ids, attention, answer, pad)
            hits += int(with_eos.sum())
            loose += int(without_eos.sum())
            loss += float(answer_ce) * len(rows[i: i + batch])
        scores[name] = {"em": round(hits / len(rows), 4), "em_without_eos": round(loose / len(rows), 4),
                        "answer_loss": round(loss / len(rows), 4)}
    model.train()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-reader"))
    parser.add_argument("--minutes", type=float, default=None, help="Train for this long (the schedule follows it).")
    parser.add_argument("--steps", type=int, default=None, help="Or for this many steps.")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--lm-weight", type=float, default=0.2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--chunk", type=int, default=64, help="Tasks a worker generates per job.")
    parser.add_argument("--held-out", type=int, default=256, help="Held-out tasks per set.")
    parser.add_argument("--eval-every", type=float, default=45.0, help="Seconds between held-out checks and saves.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.minutes is None) == (args.steps is None):
        parser.error("give exactly one of --minutes and --steps")

    import multiprocessing

    from perk_cli.models.tiny import build_tiny_tokenizer

    pool = multiprocessing.get_context("spawn").Pool(args.workers, initializer=_worker_init)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    tokenizer = build_tiny_tokenizer()
    pad = tokenizer.eos_token_id
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "metrics.jsonl").open("a")

    def record(entry: dict) -> None:
        print(json.dumps(entry), flush=True)
        log.write(json.dumps(entry) + "\n")
        log.flush()

    started = time.monotonic()
    held_jobs = {f"{s[1]}@{s[3]}": pool.apply_async(encode_sets, (s, args.held_out, HELD_OUT_SEED + i))
                 for i, s in enumerate(HELD_OUT)}
    buffers: list[list] = [[] for _ in TRAIN_SETS]
    pending: list = []
    next_seed = TRAIN_SEED

    def top_up() -> None:
        nonlocal next_seed
        for job in [p for p in pending if p[1].ready()]:
            pending.remove(job)
            buffers[job[0]].extend(job[1].get())
        while len(pending) < 2 * args.workers:
            index = min(range(len(TRAIN_SETS)), key=lambda i: len(buffers[i]) / TRAIN_SETS[i][4]
                        + sum(1 for p in pending if p[0] == i) * args.chunk / TRAIN_SETS[i][4])
            pending.append((index, pool.apply_async(encode_sets, (TRAIN_SETS[index], args.chunk, next_seed))))
            next_seed += 1

    top_up()
    while not all(buffers):
        time.sleep(0.2)
        top_up()
    held = {name: job.get() for name, job in held_jobs.items()}
    record({"event": "data ready", "seconds": round(time.monotonic() - started, 1),
            "buffered": sum(map(len, buffers))})

    model = build_model(tokenizer, args.layers, args.width, args.heads, args.positions).to(device)
    model.train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98), fused=fused)
    params = sum(p.numel() for p in model.parameters())
    record({"event": "model", "parameters": params, "args": {k: str(v) for k, v in vars(args).items()}})

    train_started, last_eval, step = time.monotonic(), time.monotonic(), 0
    weights = [s[4] for s in TRAIN_SETS]
    window = {"answer": 0.0, "lm": 0.0, "em": 0.0, "n": 0}
    while True:
        elapsed = time.monotonic() - train_started
        progress = step / args.steps if args.steps else elapsed / (args.minutes * 60)
        if progress >= 1:
            break
        step += 1
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = rng.choices(range(len(TRAIN_SETS)), weights)[0]
        rows = [rng.choice(buffers[index]) for _ in range(args.batch)]
        ids, attention, answer = collate(rows, pad, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            answer_ce, lm, hit, _ = losses(model, ids, attention, answer, pad)
        loss = answer_ce + args.lm_weight * lm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window["answer"] += float(answer_ce.detach())
        window["lm"] += float(lm.detach())
        window["em"] += float(hit.float().mean())
        window["n"] += 1
        if step % 20 == 0:
            top_up()
        if time.monotonic() - last_eval >= args.eval_every:
            last_eval = time.monotonic()
            n = max(window["n"], 1)
            record({"step": step, "seconds": round(time.monotonic() - train_started, 1), "lr": lr,
                    "train_answer_loss": round(window["answer"] / n, 4), "train_lm_loss": round(window["lm"] / n, 4),
                    "train_em": round(window["em"] / n, 4), "buffered": sum(map(len, buffers)),
                    "held_out": held_out_em(model, held, pad, device, args.batch)})
            window = {"answer": 0.0, "lm": 0.0, "em": 0.0, "n": 0}
            save(model, tokenizer, args.out / "model")
    pool.terminate()
    final = held_out_em(model, held, pad, device, args.batch)
    save(model, tokenizer, args.out / "model")
    record({"event": "done", "step": step, "seconds": round(time.monotonic() - train_started, 1),
            "parameters": params, "held_out": final, "buffered": sum(map(len, buffers))})


if __name__ == "__main__":
    main()

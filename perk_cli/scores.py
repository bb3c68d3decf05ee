"""Scores: exact match and token F1 after SQuAD normalisation (F1 over token counts, not sets), their
means over tasks, by length and by fact position, and the accuracy-versus-length plot."""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter, defaultdict
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_scores(scored: list[tuple[str, str, float]]) -> dict:
    """{"val_loss", "val_em"} over (prediction, gold, answer loss) triples; inf and 0 when empty."""
    if not scored:
        return {"val_loss": math.inf, "val_em": 0.0}
    return {"val_loss": statistics.mean(loss for _, _, loss in scored),
            "val_em": statistics.mean(exact_match(prediction, gold) for prediction, gold, _ in scored)}


def mean_forced_scores(scored: list[tuple[bool, float]]) -> dict:
    """{"val_loss", "val_em"} over (teacher-forced exact match, answer loss) pairs; inf and 0 when empty."""
    if not scored:
        return {"val_loss": math.inf, "val_em": 0.0}
    return {"val_loss": statistics.mean(loss for _, loss in scored),
            "val_em": statistics.mean(float(exact) for exact, _ in scored)}


def length_bucket(tokens: int | None) -> str:
    return "unknown" if not tokens else str(2 ** round(math.log2(max(tokens, 1))))


def position_bucket(position: float | None) -> str:
    if position is None:
        return "unknown"
    return "early" if position < 1 / 3 else ("middle" if position < 2 / 3 else "late")


def summarise(rows: list[dict]) -> dict:
    """EM/F1 per method, overall and by length bucket, position bucket and task family (rows written
    before families were recorded count as 'unknown')."""
    out: dict = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        entry = {"n": len(mine), "em": statistics.mean(r["correct"] for r in mine),
                 "f1": statistics.mean(r["f1"] for r in mine),
                 "failures": sum(1 for r in mine if r.get("note"))}
        for key in ("length_bucket", "position_bucket", "family"):
            groups = defaultdict(list)
            for r in mine:
                groups[r.get(key) or "unknown"].append(r)
            entry[f"by_{key.removesuffix('_bucket')}"] = {
                k: {"n": len(v), "em": statistics.mean(x["correct"] for x in v)} for k, v in sorted(groups.items())}
        out[method] = entry
    return out


def plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, entry in metrics.items():
        points = sorted((int(k), v["em"]) for k, v in entry["by_length"].items() if k != "unknown")
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

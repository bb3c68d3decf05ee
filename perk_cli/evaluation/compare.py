"""`perk compare`: two methods on the same tasks, task by task: which answers one gets that the other
misses, and how likely a split at least that uneven is by chance (an exact two-sided sign test on the
tasks they disagree on, McNemar's test for small counts).

Each side is an evaluation folder (or its predictions.jsonl) and a method in it, PATH[:METHOD], the
method perk unless named; the two may be one evaluation. Tasks are matched by id; a task one side lacks is
left out and counted. Where the second method is base-truncated, its tasks are also split by whether the
supporting facts were in the part it read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from perk_cli.errors import PerkError

PREDICTIONS = "predictions.jsonl"


def read_method(spec: str) -> tuple[str, dict[str, dict]]:
    """(method, {task id: row}) of PATH[:METHOD]; one line naming the argument for a missing file or method."""
    path, method = Path(spec), "perk"
    if not path.exists() and ":" in spec:
        head, _, tail = spec.rpartition(":")
        path, method = Path(head), tail
    if path.is_dir():
        path = path / PREDICTIONS
    if not path.is_file():
        raise PerkError(f"{spec}: no such evaluation (give perk eval's --out folder or its {PREDICTIONS}, and "
                        "optionally :METHOD)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PerkError(f"{path}: line {number} is not JSON; is this perk eval's {PREDICTIONS}?")
    mine = {row["id"]: row for row in rows if row.get("method") == method and "id" in row}
    if not mine:
        found = sorted({str(row.get("method")) for row in rows})
        raise PerkError(f"{spec}: no rows of method {method!r} in {path} (it holds {', '.join(found) or 'none'}); "
                        "name one with :METHOD")
    return method, mine


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact p of a split at least as uneven as wins:losses when each is 1/2 (1.0 with none)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(first: dict[str, dict], second: dict[str, dict]) -> dict:
    """Counts of the 2x2 table on the tasks both sides answered, each side's EM there, and the sign test."""
    shared = sorted(set(first) & set(second))
    right_first = {i: bool(first[i]["correct"]) for i in shared}  # perk eval writes 1.0 / 0.0
    right_second = {i: bool(second[i]["correct"]) for i in shared}
    both = sum(right_first[i] and right_second[i] for i in shared)
    only_first = sum(right_first[i] and not right_second[i] for i in shared)
    only_second = sum(right_second[i] and not right_first[i] for i in shared)
    result = {"tasks": len(shared), "unmatched": len(set(first) ^ set(second)),
              "em_first": sum(right_first.values()) / len(shared) if shared else 0.0,
              "em_second": sum(right_second.values()) / len(shared) if shared else 0.0,
              "both": both, "only_first": only_first, "only_second": only_second,
              "neither": len(shared) - both - only_first - only_second,
              "p_two_sided": sign_test(only_first, only_second)}
    read = [i for i in shared if "support_read" in second[i]]
    if read:  # base-truncated: split by whether it read the facts the answer rests on
        result["by_support_read"] = {}
        for flag in (True, False):
            ids = [i for i in read if second[i]["support_read"] is flag]
            result["by_support_read"]["read" if flag else "cut"] = {
                "tasks": len(ids),
                "em_first": sum(right_first[i] for i in ids) / len(ids) if ids else None,
                "em_second": sum(right_second[i] for i in ids) / len(ids) if ids else None}
    return result


def render(first: str, second: str, result: dict) -> str:
    lines = [f"{result['tasks']} tasks answered by both ({result['unmatched']} on one side only)",
             f"  {first}: EM {result['em_first']:.3f}    {second}: EM {result['em_second']:.3f}",
             f"  both right {result['both']}, only {first} {result['only_first']}, "
             f"only {second} {result['only_second']}, neither {result['neither']}",
             f"  sign test on the {result['only_first'] + result['only_second']} disagreements: "
             f"two-sided p = {result['p_two_sided']:.3g}"]
    for part, entry in result.get("by_support_read", {}).items():
        if entry["tasks"]:
            lines.append(f"  supporting facts {'inside' if part == 'read' else 'outside'} the part {second} read: "
                         f"{entry['tasks']} tasks, {first} {entry['em_first']:.3f}, {second} {entry['em_second']:.3f}")
    return "\n".join(lines)

"""Two methods on the same tasks, task by task: which answers one gets that the other misses, and how
likely a split at least that uneven is by chance (an exact two-sided sign test on the tasks they disagree
on, McNemar's test for small counts).

    python benchmarks/paired.py runs/ev-16384-k4/predictions.jsonl:perk \\
        runs/ev-16384-truncated/predictions.jsonl:base-truncated

Each argument is perk eval's predictions.jsonl and a method in it (FILE:METHOD); the two may be one file.
Tasks are matched by id; a task one side lacks is left out and counted. Where the second method is
base-truncated, its tasks are also split by whether the supporting facts were in the part it read.
`--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_method(spec: str) -> tuple[str, dict[str, dict]]:
    """(label, {task id: row}) of FILE:METHOD; a clear error for a missing file or method."""
    path, _, method = spec.rpartition(":")
    if not path or not method:
        raise SystemExit(f"error: {spec}: expected FILE:METHOD (perk eval's predictions.jsonl and a method in it)")
    if not Path(path).is_file():
        raise SystemExit(f"error: {path}: no such file (perk eval writes predictions.jsonl)")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    mine = {row["id"]: row for row in rows if row["method"] == method}
    if not mine:
        found = sorted({row["method"] for row in rows})
        raise SystemExit(f"error: {path}: no rows of method {method!r} (it holds {', '.join(found) or 'none'})")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="FILE:METHOD, e.g. runs/ev/predictions.jsonl:perk")
    parser.add_argument("second", help="FILE:METHOD, e.g. runs/ev-base/predictions.jsonl:base-truncated")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args()
    (first, rows_first), (second, rows_second) = read_method(args.first), read_method(args.second)
    result = compare(rows_first, rows_second)
    if result["tasks"] == 0:
        raise SystemExit(f"error: {args.first} and {args.second} share no task id: evaluations of different task sets")
    if args.json:
        print(json.dumps({"first": args.first, "second": args.second, **result}, indent=2))
    else:
        same = first == second  # one method in two evaluations: name each by its file
        print(render(args.first if same else first, args.second if same else second, result))


if __name__ == "__main__":
    main()

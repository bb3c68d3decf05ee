"""Trivial references for qa1 (and qa2) task sets, as JSON (perk_cli.evaluation.references).

    python benchmarks/heuristics.py runs/learning-tiny/data --split validation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perk_cli.evaluation.references import references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(json.dumps(references(args.directory, args.split), indent=2))


if __name__ == "__main__":
    main()

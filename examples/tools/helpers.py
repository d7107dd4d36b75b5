"""Helpers the example pools put into every container (/mnt/data/helpers.py).

Code run by the model can ``import helpers`` (after ``sys.path.insert(0, "/mnt/data")``) instead of
re-deriving how the sample sales data is shaped. Standard library only, so it runs anywhere.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

DATA_DIR = Path("/mnt/data")


def read_rows(name: str, data_dir: Path = DATA_DIR) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts keyed by its header."""
    with (data_dir / name).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def revenue_by_region(data_dir: Path = DATA_DIR) -> dict[str, float]:
    """Total revenue (units x unit_price) per region, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for row in read_rows("sales.csv", data_dir):
        totals[row["region"]] += int(row["units"]) * float(row["unit_price"])
    return dict(sorted(totals.items(), key=lambda kv: kv[1], reverse=True))


def managers(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Region -> manager, from regions.csv."""
    return {row["region"]: row["manager"] for row in read_rows("regions.csv", data_dir)}


def report(data_dir: Path = DATA_DIR) -> str:
    """A plain-text revenue report per region with its manager."""
    who = managers(data_dir)
    totals = revenue_by_region(data_dir)
    return "\n".join(f"{region:<6} {who.get(region, '?'):<15} {total:>10.2f}" for region, total in totals.items())


if __name__ == "__main__":
    import sys

    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR))

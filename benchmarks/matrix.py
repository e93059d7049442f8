"""The whole benchmark matrix in one command: each configuration against plain Celery.

    python benchmarks/matrix.py                  # every row, the counts below (~5 min)
    python benchmarks/matrix.py --only success,failure --scale 0.5 [--peers]

Each row is one run of ``throughput.py`` (a fresh store, its own worker, rounds of plain
Celery and sagas interleaved on the same broker), one after the other; the table they
make is printed as Markdown (the table of ``benchmarks/README.md``) and kept with each
run's figures as JSON under ``--out``. ``--scale`` multiplies every row's counts (a
quick look; the ratios of short runs are noisier). ``--peers`` also runs the other
libraries in the rows whose shape they have (success and failure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    """One configuration: its name, the flags that make it, and what it is to reach."""

    name: str
    flags: tuple[str, ...]
    count: int
    rounds: int
    latency: int
    goal: float | None = None  #: saga / plain throughput the project aims at (issue 14)
    peers: bool = False  #: the peers have this shape


MATRIX = (
    Row("success", (), 1000, 5, 100, goal=0.85, peers=True),
    Row("failure", ("--failure",), 600, 6, 50, goal=0.55, peers=True),
    Row("SQLite store", ("--store", "sqlite"), 1000, 5, 100, goal=0.85),
    Row("RabbitMQ broker", ("--broker", "rabbitmq"), 1000, 5, 100, goal=0.8),
    Row("1 step", ("--steps", "1"), 1000, 5, 100),
    Row("10 steps", ("--steps", "10"), 400, 4, 30, goal=0.8),
    Row("50 steps", ("--steps", "50"), 100, 2, 5),
    Row("concurrency 4", ("--concurrency", "4"), 1000, 5, 100),
)


def arguments(row: Row, scale: float, peers: bool) -> list[str]:
    """``throughput.py``'s arguments for a row, its counts scaled.

    At least 2 rounds (a median of one is no median), and a count that is a whole number
    of rounds (``throughput.py`` runs ``count // rounds`` a round).
    """
    rounds = max(2, round(row.rounds * min(scale, 1.0)))
    count = rounds * max(1, round(row.count * scale / rounds))
    latency = max(1, round(row.latency * scale))
    flags = [*row.flags, "--count", str(count), "--rounds", str(rounds)]
    flags += ["--latency", str(latency)]
    return flags + (["--peers"] if peers and row.peers else [])


def table(results: list[tuple[Row, list[str], dict[str, Any]]]) -> str:
    """The runs' figures as a Markdown table (saga / plain in each cell).

    The CPU per step is the CPU per item over the saga's forward steps (on the failure
    path it includes the compensations).
    """
    lines = [
        "| row | command | saga / plain (median of rounds) | goal | p50 ms | p95 ms "
        "| CPU ms per item (of it PostgreSQL) | CPU ms per step | first message bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, flags, figures in results:
        saga, plain = figures["kinds"]["saga"], figures["kinds"]["plain"]
        cpu = {kind: sum(figures["kinds"][kind]["cpu_ms"].values()) for kind in ("saga", "plain")}
        steps = int(figures["arguments"]["steps"])
        goal = "" if row.goal is None else f"{row.goal:.2f}x"
        cells = [
            row.name,
            f"`{' '.join(flags)}`",
            f"{saga['ratio']:.2f}x ({saga['median_ratio']:.2f}x)",
            goal,
            f"{saga['p50_ms']:.1f} / {plain['p50_ms']:.1f}",
            f"{saga['p95_ms']:.1f} / {plain['p95_ms']:.1f}",
            f"{cpu['saga']:.1f} / {cpu['plain']:.1f} ({saga['cpu_ms'].get('postgres', 0.0):.1f})",
            f"{cpu['saga'] / steps:.2f} / {cpu['plain'] / steps:.2f}",
            f"{saga['first_message_bytes']:,} / {plain['first_message_bytes']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for peer, seen in figures["kinds"].items():
            if peer in ("saga", "plain"):
                continue
            lines.append(
                f"| {row.name}: {peer} | (same run) | {seen['ratio']:.2f}x "
                f"({seen['median_ratio']:.2f}x) | | {seen['p50_ms']:.1f} "
                f"| {seen['p95_ms']:.1f} | {sum(seen['cpu_ms'].values()):.1f} | | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    names = ", ".join(row.name for row in MATRIX)
    parser.add_argument("--only", help=f"comma-separated rows to run, of: {names}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row's counts")
    parser.add_argument("--peers", action="store_true", help="the peers too, where they fit")
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/celery_saga_matrix"), help="where to keep it"
    )
    options = parser.parse_args()
    rows = list(MATRIX)
    if options.only:
        wanted = [name.strip() for name in options.only.split(",")]
        unknown = sorted(set(wanted) - {row.name for row in MATRIX})
        if unknown:
            parser.error(f"no such row: {', '.join(unknown)} (rows: {names})")
        rows = [row for row in MATRIX if row.name in wanted]
    if options.scale <= 0:
        parser.error("--scale takes a positive number")
    options.out.mkdir(parents=True, exist_ok=True)
    for earlier in [*options.out.glob("[0-9][0-9].json"), options.out / "matrix.md"]:
        earlier.unlink(missing_ok=True)  # (an earlier run's, with more rows)
    results = []
    failed = None
    for number, row in enumerate(rows, 1):
        flags = arguments(row, options.scale, options.peers)
        figures_file = options.out / f"{number:02d}.json"
        print(f"== {row.name}: throughput.py {' '.join(flags)}", flush=True)
        command = [sys.executable, str(HERE / "throughput.py"), *flags, "--json", str(figures_file)]
        if subprocess.run(command).returncode != 0:
            failed = row.name
            break
        results.append((row, flags, json.loads(figures_file.read_text())))
    made = table(results)
    (options.out / "matrix.md").write_text(made + "\n")
    print()
    print(made)
    if failed is not None:
        raise SystemExit(
            f"the {failed!r} row failed (its output is above); the table has the rows before it"
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Prints scripts/bench.sh's results as one table, each figure beside the
machine's limit measured in the same run, and each goal as met or not."""
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    return json.loads((results / f"{name}.json").read_text())


fsync = load("fsync")
gzip = load("gzip")
ingest = load("ingest")
ingest_proc = load("ingest_proc")
steady = load("steady")
steady_proc = load("steady_proc")
backlog = load("backlog")

rows = []


def row(what, value, unit, limit="", ratio="", goal="", met=None):
    verdict = "" if met is None else ("met" if met else "NOT MET")
    rows.append((what, f"{value:,.1f} {unit}".strip(), limit, ratio, goal, verdict))


row("baseline: write+fsync", fsync["mb_per_s"], "MB/s")
row("baseline: gzip -6, one core", gzip["mb_per_s"], "MB/s", goal=f"ratio {gzip['ratio']:.1f}x")

cores = ingest_proc["cpu_s"] / ingest["seconds"]
row(
    "ingest: lines/s (16 clients)",
    ingest["lines_per_s"],
    "",
    goal=">= 250,000",
    met=ingest["lines_per_s"] >= 250_000,
)
row(
    "ingest: MB/s of request bodies",
    ingest["mb_per_s"],
    "MB/s",
    f"{fsync['mb_per_s']:,.0f} MB/s disk",
    f"{ingest['mb_per_s'] / fsync['mb_per_s']:.0%} of disk",
)
row("ingest: p50 / p99 latency", ingest["p50_ms"], f"/ {ingest['p99_ms']:.1f} ms")
row("ingest: CPU", cores, "cores", "2 cores", f"{cores / 2:.0%}")
row("ingest: peak RSS", ingest_proc["peak_rss_mb"], "MB")
if ingest["failed_requests"]:
    row("ingest: failed requests", ingest["failed_requests"], "")

steady_cores = steady_proc["cpu_s"] / steady["seconds"]
row("steady: lines/s (asked 100,000)", steady["lines_per_s"], "")
row(
    "steady: p99 latency",
    steady["p99_ms"],
    "ms",
    goal="< 50 ms",
    met=steady["p99_ms"] < 50 and steady["lines_per_s"] > 90_000,
)
row(
    "steady: peak RSS, sync running",
    steady_proc["peak_rss_mb"],
    "MB",
    goal="<= 64 MB",
    met=steady_proc["peak_rss_mb"] <= 64,
)
row("steady: CPU", steady_cores, "cores", "2 cores", f"{steady_cores / 2:.0%}")

few, many = load("parts-10-proc"), load("parts-10000-proc")
row(
    f"open parts: peak RSS, {few['parts_open']} parts",
    few["peak_rss_mb"],
    "MB",
)
row(
    f"open parts: peak RSS, {many['parts_open']:,} parts",
    many["peak_rss_mb"],
    "MB",
    ratio=f"{many['peak_rss_mb'] / few['peak_rss_mb']:.2f}x",
    goal="flat, <= 64 MB",
    met=many["peak_rss_mb"] <= 64 and many["peak_rss_mb"] <= 1.2 * few["peak_rss_mb"],
)
row(
    "backlog: start-up with spool",
    backlog["startup_s"],
    f"s ({backlog['spool_mb']} MB spool)",
    goal="<= 1 s",
    met=backlog["startup_s"] <= 1,
)
drain = backlog["input_mb"] / backlog["drain_s"]
drain_cores = backlog["cpu_s"] / backlog["drain_s"]
row(
    "backlog: drain (NDJSON MB/s)",
    drain,
    "MB/s",
    f"{2 * gzip['mb_per_s']:,.0f} MB/s gzip x2",
    f"{drain / (2 * gzip['mb_per_s']):.0%}",
    goal=">= 90% of gzip per core",
    met=drain / (drain_cores * gzip["mb_per_s"]) >= 0.9 if drain_cores > 0 else False,
)
row("backlog: drain CPU", drain_cores, "cores", "2 cores", f"{drain_cores / 2:.0%}")
row("backlog: peak RSS while draining", backlog["peak_rss_mb"], "MB")

headers = ("figure", "value", "machine limit", "ratio", "goal", "")
widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(6)]
for r in [headers] + rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())

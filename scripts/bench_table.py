#!/usr/bin/env python3
"""Prints scripts/bench.sh's results as one table, each figure beside the
machine's limit measured in the same run, and each goal as met or not."""
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    return json.loads((results / f"{name}.json").read_text())


def maybe(name):
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


fsync = load("fsync")
gzip = load("gzip")
ingest = load("ingest")
ingest_proc = load("ingest_proc")
steady = load("steady")
steady_proc = load("steady_proc")
steady_fsync = maybe("steady_fsync")
baseline_steady = maybe("baseline-steady")
baseline_steady_proc = maybe("baseline-steady_proc")
baseline_steady_fsync = maybe("baseline-steady_fsync")
backlog_start = load("backlog-start")
backlog = load("backlog")
s3_start = load("backlog-s3-start")
s3 = load("backlog-s3")
s3_server = load("backlog-s3-server")
rate_limited = load("rate-limited")
baseline_s3 = maybe("baseline-backlog-s3")
outage = load("outage")
# With --baseline: an earlier build's figures, measured in the same run.
RUNS = ("-1", "-2", "")
baseline_ingest = [(maybe(f"baseline-ingest{n}"), maybe(f"baseline-ingest{n}_proc")) for n in RUNS]
current_ingest = [(maybe(f"ingest{n}"), maybe(f"ingest{n}_proc")) for n in RUNS]
baseline_outage = maybe("baseline-outage")

rows = []


def row(what, value, unit, limit="", ratio="", goal="", met=None, digits=1):
    verdict = "" if met is None else ("met" if met else "NOT MET")
    rows.append((what, f"{value:,.{digits}f} {unit}".strip(), limit, ratio, goal, verdict))


row("baseline: write+fsync", fsync["mb_per_s"], "MB/s")
row(
    "baseline: gzip -6, one core",
    gzip["mb_per_s"],
    "MB/s",
    goal=f"ratio {gzip['ratio']:.1f}x, on archived NDJSON",
)

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


def cpu_per_million(runs, part="ack path"):
    """CPU-seconds per million lines over the runs that were made: of every
    thread but the compactor (the ack path), or of the compactor alone."""
    runs = [(r, p) for r, p in runs if r and p]
    lines = sum(r["lines"] for r, _ in runs)
    compact = sum(p.get("compact_cpu_s", 0) for _, p in runs)
    cpu = sum(p["cpu_s"] for _, p in runs) - compact if part == "ack path" else compact
    return cpu / lines * 1e6 if lines else 0


# What a host gives up per line: CPU-seconds per million lines ingested, on
# the way to the ack. The compactor's share (compression that staging did
# after sealing before) is counted on its own row.
per_million = cpu_per_million(current_ingest)
if baseline_ingest[-1][0]:
    before = cpu_per_million(baseline_ingest)
    row(
        "ingest: CPU per million lines",
        per_million,
        "CPU-s",
        f"{before:.2f} CPU-s baseline",
        f"{per_million / before:.0%}" if before else "",
        "<= 1/3 of baseline",
        met=before > 0 and per_million <= before / 3,
        digits=2,
    )
    measured = [r["lines_per_s"] for r, _ in baseline_ingest if r]
    row("ingest: baseline lines/s", sum(measured) / len(measured), "", goal="mean of its runs")
else:
    row("ingest: CPU per million lines", per_million, "CPU-s", digits=2)
row(
    "ingest: compactor CPU per million lines",
    cpu_per_million(current_ingest, "compactor"),
    "CPU-s",
    goal="in the background, at nice 10",
    digits=2,
)
row("ingest: peak RSS", ingest_proc["peak_rss_mb"], "MB")
if ingest["failed_requests"]:
    row("ingest: failed requests", ingest["failed_requests"], "")

# The other sources, each alone on a fresh larch, beside the HTTP figure of
# the same run (all of larch's CPU, the compactor included, on both sides).
http_all = ingest_proc["cpu_s"] / ingest["lines"] * 1e6 if ingest["lines"] else 0
journal_child = maybe("journald-child")
for name, what in (
    ("syslog", "syslog over TCP, 4 connections"),
    ("otlp", "OTLP/HTTP protobuf, 16 clients"),
    ("journald", "journal via journalctl"),
):
    figures = maybe(name)
    if not figures or not figures["lines"] or figures["seconds"] <= 0:
        continue
    per_million = figures["cpu_s"] / figures["lines"] * 1e6
    row(f"{name}: lines/s ({what})", figures["lines"] / figures["seconds"], "",
        f"{ingest['lines_per_s']:,.0f} HTTP")
    note = ""
    if name == "journald" and journal_child:
        note = f"{journal_child['journalctl_cpu_s'] / figures['lines'] * 1e6:.2f} of them journalctl's"
    row(f"{name}: CPU per million lines", per_million, "CPU-s",
        f"{http_all:.2f} CPU-s HTTP", f"{per_million / http_all:.1f}x" if http_all else "", note,
        digits=2)

steady_cores = steady_proc["cpu_s"] / steady["seconds"]
row("steady: lines/s (asked 100,000)", steady["lines_per_s"], "")
row(
    "steady: p99 latency",
    steady["p99_ms"],
    "ms",
    f"{steady_fsync['p99_ms']:,.1f} ms disk fsync p99" if steady_fsync else "",
    goal="< 50 ms",
    met=steady["p99_ms"] < 50 and steady["lines_per_s"] > 90_000,
)
if steady_fsync:
    row(
        "steady: disk fsync p50 / p99 / max",
        steady_fsync["p50_ms"],
        f"/ {steady_fsync['p99_ms']:,.1f} / {steady_fsync['max_ms']:,.1f} ms",
        goal="4 KiB + fdatasync every 20 ms beside larch",
    )
if baseline_steady:
    row(
        "steady: baseline p99 latency",
        baseline_steady["p99_ms"],
        "ms",
        f"{baseline_steady_fsync['p99_ms']:,.1f} / {baseline_steady_fsync['max_ms']:,.1f} ms disk fsync p99 / max"
        if baseline_steady_fsync
        else "",
        goal="the same load and disk, just before",
    )
row(
    "steady: peak RSS, sync running",
    steady_proc["peak_rss_mb"],
    "MB",
    goal="<= 64 MB",
    met=steady_proc["peak_rss_mb"] <= 64,
)
row(
    "steady: CPU",
    steady_cores,
    f"cores ({steady_proc.get('compact_cpu_s', 0) / steady['seconds']:.2f} of them compressing)",
    "2 cores",
    f"{steady_cores / 2:.0%}",
)
if baseline_steady_proc:
    row(
        "steady: baseline CPU",
        baseline_steady_proc["cpu_s"] / baseline_steady["seconds"],
        "cores",
        "2 cores",
        goal="compressing as it stages sealed parts",
    )

def outage_row(o, baseline=None):
    row(
        "outage: first / last part uploaded",
        o["first_upload_s"],
        f"/ {o['drain_s']:.1f} s after the store returned",
        f"{o['objects']} objects, {o['input_mb']:,.0f} MB NDJSON",
        "" if baseline is None else f"baseline {baseline['first_upload_s']:.1f} / {baseline['drain_s']:.1f} s",
    )


outage_row(outage, baseline_outage)

few, mid, many = (load(f"parts-{n}-proc") for n in (10, 1000, 10000))
for p in (few, mid):
    row(f"open parts: peak RSS, {p['parts_open']:,} parts", p["peak_rss_mb"], "MB")
# Flat means no memory per part beyond its index entry: a buffer per open part
# (say a 64 KiB block) would cost 640 MB at 10,000 parts.
per_part_kib = (many["peak_rss_mb"] - few["peak_rss_mb"]) * 1024 / max(
    many["parts_open"] - few["parts_open"], 1
)
row(
    f"open parts: peak RSS, {many['parts_open']:,} parts",
    many["peak_rss_mb"],
    "MB",
    ratio=f"{max(per_part_kib, 0):.2f} KiB/part",
    goal="flat (< 1 KiB/part), <= 64 MB",
    met=many["peak_rss_mb"] <= 64 and per_part_kib < 1,
)
row(
    "backlog: start-up with spool",
    backlog_start["startup_s"],
    f"s ({backlog_start['spool_mb']:,} MB spool)",
    goal="<= 1 s",
    met=backlog_start["startup_s"] <= 1,
)


def drain_rows(d):
    speed = d["input_mb"] / d["drain_s"]
    cores = d["cpu_s"] / d["drain_s"]
    per_core = d["input_mb"] / d["cpu_s"] if d["cpu_s"] > 0 else 0
    return speed, cores, per_core


speed, cores, per_core = drain_rows(backlog)
# How many hours of outage a disk holds: spool bytes per byte of NDJSON archived.
spool_ratio = backlog_start["spool_mb"] / backlog["input_mb"] if backlog["input_mb"] else 0
row(
    "backlog: spool bytes per NDJSON byte",
    spool_ratio,
    f"({backlog_start['spool_mb']:,} MB for {backlog['input_mb']:,.0f} MB NDJSON)",
    goal="<= 0.3",
    met=spool_ratio <= 0.3,
    digits=2,
)
row(
    "backlog: drain to a directory",
    speed,
    f"MB/s ({backlog['input_mb']:,.0f} MB NDJSON)",
    f"{2 * gzip['mb_per_s']:,.0f} MB/s gzip x2",
    f"{speed / (2 * gzip['mb_per_s']):.0%}",
)
# Members compressed while their parts were open: a drain copies them, so it
# no longer needs every core (it did when it compressed everything itself).
row("backlog: drain CPU", cores, "cores", "2 cores", f"{cores / 2:.0%}")
row(
    "backlog: drain per core of CPU",
    per_core,
    "MB/s",
    f"{gzip['mb_per_s']:,.1f} MB/s gzip",
    f"{per_core / gzip['mb_per_s']:.0%}",
    ">= 90% of gzip",
    met=per_core >= 0.9 * gzip["mb_per_s"],
)
row("backlog: peak RSS while draining", backlog["peak_rss_mb"], "MB")
s3_speed, s3_cores, s3_per_core = drain_rows(s3)
server_cores = s3_server["cpu_s"] / s3["drain_s"]
row(
    "backlog: drain to S3 (s3s-fs)",
    s3_speed,
    f"MB/s ({s3['input_mb']:,.0f} MB NDJSON)",
    f"{speed:,.1f} MB/s to a directory",
    f"{s3_speed / speed:.0%}",
)
row(
    "backlog: S3 drain CPU, larch + server",
    s3_cores,
    f"+ {server_cores:.2f} cores",
    "2 cores",
    f"{(s3_cores + server_cores) / 2:.0%}",
)
# The server shares the two cores here; what larch gets done per core of its
# own CPU says whether uploading costs more than writing a file.
row(
    "backlog: S3 drain per core of larch CPU",
    s3_per_core,
    "MB/s",
    f"{per_core:,.1f} MB/s to a directory",
    f"{s3_per_core / per_core:.0%}",
    ">= 90% of directory",
    met=s3_per_core >= 0.9 * per_core,
)
if baseline_s3:
    b_speed, _, _ = drain_rows(baseline_s3)
    row(
        "backlog: S3 drain vs baseline",
        s3_speed,
        "MB/s",
        f"{b_speed:,.1f} MB/s baseline ({baseline_s3['input_mb']:,.0f} MB NDJSON)",
        f"{s3_speed / b_speed:.1f}x" if b_speed else "",
        ">= 3x baseline",
        met=b_speed > 0 and s3_speed >= 3 * b_speed,
    )
    cpu_mb = s3["cpu_s"] / s3["input_mb"] if s3["input_mb"] else 0
    b_cpu_mb = baseline_s3["cpu_s"] / baseline_s3["input_mb"] if baseline_s3["input_mb"] else 0
    row(
        "backlog: S3 drain CPU per GB of NDJSON",
        cpu_mb * 1000,
        "CPU-s",
        f"{b_cpu_mb * 1000:,.2f} CPU-s baseline",
        f"{cpu_mb / b_cpu_mb:.0%}" if b_cpu_mb else "",
        "<= 1/3 of baseline",
        met=b_cpu_mb > 0 and cpu_mb <= b_cpu_mb / 3,
        digits=2,
    )
row(
    "backlog: S3 drain through upload_rate_limit",
    rate_limited["upload_mb_s"],
    "MB/s",
    f"{rate_limited['limit_mb_s']:,.1f} MB/s limit",
    f"{rate_limited['upload_mb_s'] / rate_limited['limit_mb_s']:.0%}",
    "at the limit",
    met=rate_limited["upload_mb_s"] >= 0.9 * rate_limited["limit_mb_s"],
)
row(
    "backlog: larch CPU at that limit",
    rate_limited["cores"] * 100,
    "% of a core",
    goal="< 20 %",
    met=rate_limited["cores"] < 0.2,
)
row("backlog: S3 start-up with spool", s3_start["startup_s"], "s")
row("backlog: peak RSS draining to S3", s3["peak_rss_mb"], "MB")

headers = ("figure", "value", "machine limit", "ratio", "goal", "")
widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(6)]
for r in [headers] + rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())

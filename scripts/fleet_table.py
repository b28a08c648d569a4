"""The README's table of a scripts/fleet.sh run, from its results file:

    python3 scripts/fleet_table.py data/bench/fleet.XXXXXX/results.jsonl
"""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| Writers | Build | fleet_size | Hour | Objects | Object size | Requests per object (by kind) | Bytes sent per byte archived | Largest .N | Hour archived in |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["by_kind_per_object"].items()))
    size = r.get("fleet_size")
    who = f'{r["writers"]} {"processes" if r["mode"] == "processes" else "in one process"}'
    object_kb = r["archived_bytes"] / r["objects"] / 1000
    print(f'| {who} | {r["build"]} | {size if size is not None else "-"} | {r["hour"]} | {r["objects"]} '
          f'| {object_kb:.0f} KB | {r["requests_per_object"]:.2f} ({kinds}) '
          f'| {r["sent_per_archived_byte"]:.3f} | {r["largest_n"]} | {r["seconds"]:.1f} s |')

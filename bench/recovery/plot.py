#!/usr/bin/env python3
"""Recovery times R(t) as a picture: one row of dots per kind of fault.

Input: `kind,milliseconds` lines, as the chaos and failover tests append them
to $PAYRAIL_RECOVERY_OUT (tests/chaos.rs, `record_recoveries`). Output: an
SVG (log-scale time axis, a dot per recovery, the median marked) and the
raw times in OUT_DIR; the Markdown table is printed, for the report beside
them. Standard library only.

    PAYRAIL_RECOVERY_OUT=/tmp/r.csv cargo test --test chaos -- --test-threads 1
    python3 bench/recovery/plot.py /tmp/r.csv bench/reports/recovery-YYYY-MM-DD
"""
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

LABELS = {
    "chaos-host": "host SIGKILLed: next payment acknowledged",
    "chaos-postgres": "Postgres crash-restart: next payment",
    "chaos-drain": "last host kill: outbox drained",
    "failover": "primary killed, sync standby promoted: next payment",
    "failover-async": "primary killed, async standby promoted: next payment",
}
ORDER = list(LABELS)


def read(path):
    data = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        kind, ms = line.split(",")
        data[kind].append(int(ms))
    return data


def svg(data):
    kinds = [k for k in ORDER if k in data] + sorted(k for k in data if k not in ORDER)
    left, right, top, row = 430, 40, 40, 46
    width = 1080
    height = top + row * len(kinds) + 50
    lo, hi = 1, 100_000  # 1 ms .. 100 s
    span = width - left - right

    def x(ms):
        v = min(max(ms, lo), hi)
        return left + span * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15">Recovery time after each fault, log scale '
        "(red: the median)</text>",
    ]
    for decade in range(0, 6):
        ms = 10**decade
        gx = x(ms)
        label = f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"
        out.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{height - 40}" stroke="#ddd"/>')
        out.append(f'<text x="{gx:.1f}" y="{height - 22}" text-anchor="middle" fill="#555">{label}</text>')
    for i, kind in enumerate(kinds):
        y = top + row * i + row / 2
        values = sorted(data[kind])
        med = statistics.median(values)
        out.append(
            f'<text x="{left - 10}" y="{y + 4:.1f}" text-anchor="end">{LABELS.get(kind, kind)} '
            f"(n={len(values)})</text>"
        )
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eee"/>')
        for j, v in enumerate(values):
            jitter = ((j * 7) % 5 - 2) * 2.5
            out.append(
                f'<circle cx="{x(v):.1f}" cy="{y + jitter:.1f}" r="4" fill="#2a6fdb" fill-opacity="0.55"/>'
            )
        mx = x(med)
        out.append(f'<line x1="{mx:.1f}" y1="{y - 14:.1f}" x2="{mx:.1f}" y2="{y + 14:.1f}" stroke="#d33" stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out), kinds


def table(data, kinds):
    rows = ["| fault | n | median | p90 | max |", "|---|---|---|---|---|"]
    for kind in kinds:
        v = sorted(data[kind])
        p90 = v[min(len(v) - 1, math.ceil(0.9 * len(v)) - 1)]
        rows.append(
            f"| {LABELS.get(kind, kind)} | {len(v)} | {statistics.median(v):.0f} ms | {p90} ms | {v[-1]} ms |"
        )
    return "\n".join(rows)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = read(sys.argv[1])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    picture, kinds = svg(data)
    (out / "recovery.svg").write_text(picture)
    (out / "recovery.csv").write_text(Path(sys.argv[1]).read_text())
    print(table(data, kinds))


if __name__ == "__main__":
    main()

"""pytest-benchmark JSON -> a Markdown table and a PNG chart.

    python benchmarks/report.py benchmarks/results/<device>/bench_attention.json [more.json ...] \
        --out benchmarks/results/<device>

For every group (what is compared: op or model, shape, pass) the table lists each implementation's
median time (from ``extra_info.median_ms``: CUDA-event timing on a GPU), TFLOP/s, GB/s and fraction
of peak, peak memory, and the speedup of the fastuvit implementation over it. Candidates are the
implementations whose name starts with ``fused``, ``triton`` or ``fastuvit``; the others are
baselines. The chart shows, per group, the best candidate's speedup over each baseline. The header
names the device, date, commit and versions recorded in the JSON itself.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

CANDIDATE_PREFIXES = ("fused", "triton", "fastuvit")


def is_candidate(impl: str) -> bool:
    return impl.startswith(CANDIDATE_PREFIXES)


def load_rows(paths):
    rows, meta = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta.append({"file": os.path.basename(path), "datetime": data.get("datetime"),
                     "commit": (data.get("commit_info") or {}).get("id"),
                     "dirty": (data.get("commit_info") or {}).get("dirty"),
                     "machine": (data.get("machine_info") or {}).get("node")})
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            if "median_ms" not in info:
                continue
            rows.append({"group": bench.get("group") or bench["name"], "name": bench["name"],
                         "impl": info.get("impl", bench["name"]), **info})
    return rows, meta


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def speedups(group_rows):
    """{baseline impl: best candidate median / ... } as baseline_ms / best_candidate_ms."""
    candidates = [r for r in group_rows if is_candidate(r["impl"])]
    if not candidates:
        return None, {}
    best = min(candidates, key=lambda r: r["median_ms"])
    return best, {r["impl"]: r["median_ms"] / best["median_ms"] for r in group_rows if not is_candidate(r["impl"])}


def _impl_label(row, best_candidate, fastest) -> str:
    """The implementation, marked when it is the fastest of its group and when it is the fastuvit
    candidate the speedups are computed for (both, when fastuvit wins)."""
    marks = [m for m, on in (("fastest", row is fastest), ("fastuvit", row is best_candidate)) if on]
    return row["impl"] + (f" **({', '.join(marks)})**" if marks else "")


def markdown(rows, meta) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    first = rows[0] if rows else {}
    lines = [
        f"# Benchmark results: {first.get('device', '?')}",
        "",
        f"torch {first.get('torch')}, triton {first.get('triton')}; "
        + "; ".join(f"{m['file']}: {m['datetime']}, commit {str(m['commit'])[:10]}{' (dirty)' if m['dirty'] else ''}"
                    for m in meta),
        "",
    ]
    if any(r.get("smoke") for r in rows):
        lines += ["Smoke run without a GPU (tiny shapes, CPU): the times say nothing about speed.", ""]
    for group in sorted(groups):
        group_rows = sorted(groups[group], key=lambda r: r["median_ms"])
        best, ratio = speedups(group_rows)
        lines += [f"## {group}", "",
                  "| impl | median ms | TFLOP/s | % peak FLOP/s | GB/s | % peak BW | peak mem MiB | fastuvit speedup |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group_rows:
            mem = r.get("peak_memory_bytes")
            pct_f = r.get("fraction_of_peak_tflops")
            pct_b = r.get("fraction_of_peak_gbps")
            lines.append(
                f"| {_impl_label(r, best, group_rows[0])} | {r['median_ms']:.4f} | {_fmt(r.get('tflops'), '.1f')} "
                f"| {_fmt(pct_f and 100 * pct_f, '.1f')} | {_fmt(r.get('gbps'), '.0f')} | {_fmt(pct_b and 100 * pct_b, '.1f')} "
                f"| {_fmt(mem and mem / 2**20, '.0f')} | {_fmt(ratio.get(r['impl']), '.2f')}{'x' if r['impl'] in ratio else ''} |")
        lines.append("")
    return "\n".join(lines)


def chart(rows, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    labels, values = [], []
    for group in sorted(groups):
        best, ratio = speedups(groups[group])
        for impl, value in sorted(ratio.items()):
            labels.append(f"{group}\nvs {impl}")
            values.append(value)
    if not values:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(values) + 1.2))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("fastuvit speedup (baseline time / fastuvit time)")
    smoke = any(r.get("smoke") for r in rows)
    ax.set_title(rows[0].get("device", "") + (" (smoke run: not a speed figure)" if smoke else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--out", required=True, help="folder for report.md and report.png")
    parser.add_argument("--name", default="report", help="file stem of the outputs")
    args = parser.parse_args(argv)
    rows, meta = load_rows(args.json)
    if not rows:
        parser.exit(2, "no benchmarks with extra_info.median_ms in the given files\n")
    os.makedirs(args.out, exist_ok=True)
    md_path = os.path.join(args.out, f"{args.name}.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, meta))
    png_path = os.path.join(args.out, f"{args.name}.png")
    print(md_path, png_path if chart(rows, png_path) else "(no chart: matplotlib missing or no baselines)")


if __name__ == "__main__":
    main()

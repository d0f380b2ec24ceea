"""Benchmark report: results.json -> report.md, throughput.png, scaling.png (reads JSON only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ORDER = ["numpy", "torch", "mxnet", "tensorflow", "jax"]


def _main_points(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["backend"], r["variant"]): r for r in results if not r.get("sweep") and "error" not in r}


def main_table(payload: dict[str, Any]) -> str:
    pts = _main_points(payload["results"])
    head = ("| backend | variant | tokens/s (median) | spread (min–max) | % roofline | vs own eager | vs built-in layer "
            "| first epoch s | peak RSS MB |")
    lines = [head, "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(pts.values(), key=lambda r: (ORDER.index(r["backend"]) if r["backend"] in ORDER else 99,
                                                  ["eager", "fast", "builtin"].index(r["variant"]))):
        eager = pts.get((r["backend"], "eager"))
        builtin = pts.get((r["backend"], "builtin"))
        vs_eager = f"{r['median'] / eager['median']:.2f}x" if eager and r["variant"] != "eager" else "-"
        vs_builtin = f"{r['median'] / builtin['median']:.2f}x" if builtin and r["variant"] == "fast" else "-"
        lines.append(f"| {r['backend']} | {r['variant']} | {r['median']:,.0f} | {r['min']:,.0f}–{r['max']:,.0f} "
                     f"| {r['pct_roofline']:.0f}% | {vs_eager} | {vs_builtin} | {r['first_epoch_seconds']:.2f} "
                     f"| {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def scaling_table(payload: dict[str, Any]) -> str:
    pts = [r for r in payload["results"] if r.get("sweep") and "error" not in r]
    if not pts:
        return ""
    lines = ["| backend | varied | value | tokens/s | % roofline | peak RSS MB |", "|---|---|---:|---:|---:|---:|"]
    for r in pts:
        lines.append(f"| {r['backend']} | {r['sweep']} | {r['overrides'][r['sweep']]} | {r['median']:,.0f} "
                     f"| {r['pct_roofline']:.0f}% | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def plot(payload: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullLocator
    except ImportError:
        return []
    made = []
    pts = _main_points(payload["results"])
    backends = [b for b in ORDER if any(k[0] == b for k in pts)]
    variants = ["eager", "fast", "builtin"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.27
    for j, v in enumerate(variants):
        xs = [i + (j - 1) * width for i, b in enumerate(backends) if (b, v) in pts]
        ys = [pts[(b, v)]["median"] for b in backends if (b, v) in pts]
        errs = [[pts[(b, v)]["median"] - pts[(b, v)]["min"] for b in backends if (b, v) in pts],
                [pts[(b, v)]["max"] - pts[(b, v)]["median"] for b in backends if (b, v) in pts]]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=v)
    roof = next(iter(pts.values()))["roofline_tokens_per_sec"] if pts else None
    if roof:
        ax.axhline(roof, color="red", linestyle=":", label=f"GEMM roofline {roof:,.0f}")
        ax.axhline(0.4 * roof, color="gray", linestyle=":", label="40% roofline")
    ax.set_xticks(range(len(backends)), backends)
    ax.set_ylabel("tokens/s (median, min–max)")
    ax.set_title("Training throughput, d2l ed. 1 shapes (B=32, T=35, H=512, float32)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    made.append("throughput.png")

    sweep = [r for r in payload["results"] if r.get("sweep") and "error" not in r]
    if sweep:
        keys = ["num_hiddens", "num_steps", "batch_size"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        fig.suptitle("Fast path, float32; the others at B=32, T=35, H=512", fontsize=9)
        for ax, key in zip(axes, keys):
            for b in ORDER:
                rs = sorted((r for r in sweep if r["sweep"] == key and r["backend"] == b), key=lambda r: r["overrides"][key])
                if rs:
                    ax.plot([r["overrides"][key] for r in rs], [r["median"] for r in rs], marker="o", label=b)
            ax.set(xscale="log", yscale="log", xlabel=key, ylabel="tokens/s", title=f"varying {key}")
            values = sorted({r["overrides"][key] for r in sweep if r["sweep"] == key})
            ax.set_xticks(values, [str(v) for v in values])  # the measured points, not log decades
            ax.xaxis.set_minor_locator(NullLocator())
            thousands = FuncFormatter(lambda v, _: f"{v / 1000:g}k")
            ax.yaxis.set_major_formatter(thousands)
            lo, hi = ax.get_ylim()
            if hi / lo < 10:  # a range inside one decade has no major tick: label the minor ones
                ax.yaxis.set_minor_formatter(thousands)
            ax.grid(True, which="major", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=110)
        plt.close(fig)
        made.append("scaling.png")
    return made


def write(payload: dict[str, Any], out: Path) -> None:
    made = plot(payload, out)
    g, m = payload["gemm"], payload["machine"]
    failures = [r for r in payload["results"] if "error" in r]
    parts = [
        "# multirnn training benchmark",
        "",
        f"Command: `{payload['command']}`  ",
        f"Created: {payload['created']}  ",
        f"Machine: {m.get('cpu_model') or m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}  ",
        f"Measured float32 GEMM: **{g['flops'] / 1e9:.1f} GFLOP/s** ({g['library']}, {g['n']}x{g['n']}, median of 10). "
        "FLOP per token = 3 x (2H² + 4HV) = "
        f"{3 * (2 * 512 * 512 + 4 * 512 * 28) / 1e6:.3f} M at H=512, V=28, so the roofline is "
        f"{g['flops'] / (3 * (2 * 512 * 512 + 4 * 512 * 28)):,.0f} tokens/s.",
        "",
        f"Device: {payload['results'][0].get('device', 'cpu') if payload['results'] else 'cpu'}; thread settings: "
        + "; ".join(sorted({f"{r['backend']}: {r['threads']}" for r in payload['results'] if r.get('threads') and not r.get('sweep')}))
        + " (0 = the framework's default; OMP/MKL/OPENBLAS thread variables are listed only when set).",
        "",
        "Each row: its own process, one warm-up epoch excluded (its time is the first-epoch column), then at "
        "least the configured number of timed epochs; tokens/s median and min–max over those epochs.",
        "",
        main_table(payload),
        "",
        "Built-in layers: " + "; ".join(f"{k}: {v}" for k, v in payload["builtin_layers"].items()) + ".",
    ]
    if "throughput.png" in made:
        parts += ["", "![throughput](throughput.png)"]
    if scaling_table(payload):
        parts += ["", "## Scaling (fast path)", "", scaling_table(payload)]
        if "scaling.png" in made:
            parts += ["", "![scaling](scaling.png)"]
    if failures:
        parts += ["", "## Failed measurements", ""] + [f"- {r['backend']}/{r['variant']}: {r['error']}" for r in failures]
    (out / "report.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":  # re-render a report from its results.json
    folder = Path(sys.argv[1])
    write(json.loads((folder / "results.json").read_text()), folder)

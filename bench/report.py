"""Turn a bench run's JSON into a Markdown table and PNG plots.

    python bench/report.py                      # newest bench/results/raw/*.json -> bench/results/run/latest.md + PNGs
    python bench/report.py RUN.json --output bench/results/large.md --no-plots --group large
    python bench/report.py --update-readme      # also put the preset table into bench/README.md

Speed-up against a baseline = the baseline's time / the backend's time (> 1: faster). Memory
ratio = the backend's peak / the baseline's peak (< 1: less memory). "/ matmul" = the enveloping
term's time over one K x D by D x N matrix product: its floor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

if __package__:
    from . import machine
else:  # run as a script, python bench/report.py: its folder is on the path
    import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RAW = RESULTS / "raw"
# A run's report and plots go to an untracked folder; the tracked figures of one quiet run
# (bench/results/quiet.md and its plots, quoted by the READMEs) are only replaced on purpose.
RUN_REPORT = RESULTS / "run" / "latest.md"
QUIET_REPORT = RESULTS / "quiet.md"
README = HERE / "README.md"
README_START, README_END = "<!-- latest-table:start -->", "<!-- latest-table:end -->"

GROUP_TITLES = {
    "preset": "Preset sizes",
    "fixed": "Fixed per-call cost: (B, K, N) = (4, 4, 4), sts_b otherwise (next to nothing to compute)",
    "sweep_n": "Scaling in N (anchors), imdb_wiki otherwise (B 256, K 187)",
    "sweep_k": "Scaling in K (bins), imdb_wiki otherwise (B 256, N 2000)",
    "sweep_b": "Scaling in B (batch), imdb_wiki otherwise (K 187, N 2000)",
    "large": "Large: K = 1000, N = 10^6 (imdb_wiki otherwise)",
}
IMPL_ORDER = ("released", "reference", "cpu", "cpu-terms", "triton", "triton-terms", "cuda", "matmul")
BASELINE_IMPLS = ("released", "reference", "matmul")
TERM_ORDER = ("srl", "contrastive", "enveloping", "homogeneity")
MEMORY_RESOLUTION = 64 * 1024  # RSS counts pages, and small blocks come from memory malloc already holds
SWEEP_AXES = {"sweep_n": ("num_anchors", "N"), "sweep_k": ("num_bins", "K"), "sweep_b": ("batch", "B")}


def latest_json() -> Path:
    runs = sorted(RAW.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit(f"no bench results in {RAW}: run `pytest bench/` first")
    return runs[-1]


def load(path: Path, stat: str, groups: list[str] | None) -> tuple[dict, dict]:
    """(run metadata, rows[(group, case, term)][impl] = {time_s, memory_bytes, sizes})."""
    data = json.loads(path.read_text())
    rows: dict[tuple, dict] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if groups and info["group"] not in groups:
            continue
        stats = bench["stats"]
        rows[(info["group"], info["case"], info["term"])][info["impl"]] = {
            "time_s": stats[stat],
            "memory_bytes": info.get("peak_memory_bytes"),
            # how far the rounds spread: the median round over the fastest (1 = steady)
            "spread": stats["median"] / stats["min"] if stats.get("min") and stats.get("median") else None,
            "model": info.get("model"),
            # time over the K x N product, the two timed alternately (bench/test_srl_bench.py, step 4)
            "paired_floor": info.get("paired_floor_ratio"),
            **{k: info[k] for k in ("batch", "num_bins", "num_anchors", "dim")},
        }
    meta = dict(data["machine_info"].get("srl_bench", {}))
    meta.update(datetime=data.get("datetime", "?"), commit=data.get("commit_info", {}).get("id", "?"))
    meta["skipped"] = data.get("srl_bench_skipped", {})
    return meta, rows


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _mib(value: int | None) -> str:
    if value is None:
        return "-"
    if value < MEMORY_RESOLUTION:
        return "<0.06"
    mib = value / 2**20
    return f"{mib:.3g}" if mib < 1000 else f"{mib:,.0f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return "-"
    r = numerator / denominator
    if r < 0.1:
        return f"{r:.2g}"
    return f"{r:.2f}" if r < 100 else f"{r:,.0f}"


def _memory_ratio(mine: int | None, baseline: int | None) -> str:
    if mine is None or baseline is None or baseline < MEMORY_RESOLUTION:
        return "-"
    if mine < MEMORY_RESOLUTION:  # below resolution: an upper bound
        return "<" + _ratio(MEMORY_RESOLUTION, baseline)
    return _ratio(mine, baseline)


def _sort_key(key: tuple) -> tuple:
    group, case, term = key
    group_rank = list(GROUP_TITLES).index(group) if group in GROUP_TITLES else 99
    term_rank = TERM_ORDER.index(term) if term in TERM_ORDER else 99
    return group_rank, term_rank, case


def _case_sort(rows: dict, key: tuple) -> tuple:
    first = next(iter(rows[key].values()))
    return first["batch"], first["num_bins"], first["num_anchors"]


def table(rows: dict, group: str) -> list[str]:
    keys = [k for k in rows if k[0] == group]
    keys.sort(key=lambda k: (_sort_key(k)[:2], _case_sort(rows, k)))
    lines = [
        "| case (B, K, N) | term | backend | time (ms) | speed-up vs reference | speed-up vs released "
        "| peak memory (MiB) | memory / reference | memory / released | time / matmul | paired / matmul |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        _, case, term = key
        by_impl = rows[key]
        ref, rel, floor = by_impl.get("reference"), by_impl.get("released"), by_impl.get("matmul")
        for impl in sorted(by_impl, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99):
            r = by_impl[impl]
            sizes = f"{case} ({r['batch']}, {r['num_bins']}, {r['num_anchors']})"
            lines.append(
                "| "
                + " | ".join(
                    [
                        sizes,
                        term,
                        "matmul (floor)" if impl == "matmul" else impl,
                        _ms(r["time_s"]),
                        _ratio(ref and ref["time_s"], r["time_s"]) if impl != "matmul" else "",
                        _ratio(rel and rel["time_s"], r["time_s"]) if impl != "matmul" else "",
                        _mib(r["memory_bytes"]),
                        _memory_ratio(r["memory_bytes"], ref and ref["memory_bytes"]) if impl != "matmul" else "",
                        _memory_ratio(r["memory_bytes"], rel and rel["memory_bytes"]) if impl != "matmul" else "",
                        _ratio(r["time_s"], floor["time_s"]) if floor and impl != "matmul" else "",
                        _ratio(r["paired_floor"], 1.0) if r.get("paired_floor") is not None else "",
                    ]
                )
                + " |"
            )
    return lines


def header(meta: dict, stat: str, source: Path) -> list[str]:
    device = meta.get("device", "?")
    machine = (
        f"{meta.get('device_name', '?')}"
        if device.startswith("cuda")
        else f"CPU: {meta.get('cpu_model', '?')} ({vector_extensions(meta)}), {meta.get('cpu_count', '?')} cores, "
        f"{meta.get('memory_gib', '?')} GiB"
    )
    lines = [
        "# srl-ext bench results",
        "",
        f"- Run: {meta.get('datetime', '?')}, commit {str(meta.get('commit', '?'))[:10]}, "
        f"`{meta.get('command', 'pytest bench/')}`"
        f" ({'full sweep' if meta.get('full') else 'plain run'}); source `{source.name}`.",
        f"- Machine: {machine}; device `{device}`; torch {meta.get('torch', '?')}, "
        f"{meta.get('torch_threads', '?')} threads; {load_text(meta)}.",
        f"- Time: the {stat} over the timed rounds of one forward + backward step (float32). The machine is "
        "shared, so noise only adds time: the minimum is the steadiest figure.",
        f"- Peak memory: {meta.get('memory_method', '?')}. `<0.06` = below the 64 KiB resolution of that measure.",
        f"- Every row passed parity with the reference before it was timed ({meta.get('parity', '?')}).",
        "- Speed-up = baseline time / backend time (> 1 is faster); memory ratio = backend peak / baseline peak "
        "(< 1 is less); time / matmul = the enveloping term or the whole loss over one K x D by D x N product "
        "into a preallocated output, their floor (that row's memory is its K x N output, paged in by its first "
        "write); paired / matmul = the same ratio with the step and the product timed alternately, round by round "
        "(the verdict's and the targets' floor ratio where present: a shared host's speed drifts between rows).",
        "- Backends: `cpu`, `triton`, `cuda` compute the whole loss (`srl`) with `srl_ext.functional.srl_loss` (one "
        "whole-loss op where the backend has one: `cpu`, `triton`); `cpu-terms`, `triton-terms` with the same "
        "backend's four term ops weighed in Python, as before the whole-loss op.",
        "- Baselines: `reference` = srl_ext.reference (vectorised PyTorch, B x K and N x K matrices); "
        "`released` = bench/released.py, the way the released training code computes (a Python loop over the "
        "labels in the batch, the full K x N cosine matrix with a mask).",
    ]
    for impl, reason in sorted(meta.get("skipped", {}).items()):
        lines.append(f"- Not run: `{impl}`: {reason}.")
    return lines


def plots(rows: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for group, (size, letter) in SWEEP_AXES.items():
        terms = sorted({k[2] for k in rows if k[0] == group}, key=lambda t: TERM_ORDER.index(t))
        if not terms:
            continue
        for quantity, label, unit in (("time_s", "time", 1e3), ("memory_bytes", "memory", 1 / 2**20)):
            fig, axes = plt.subplots(1, len(terms), figsize=(5.5 * len(terms), 4.2), squeeze=False)
            for ax, term in zip(axes[0], terms):
                series = defaultdict(list)
                for key, by_impl in rows.items():
                    if key[0] != group or key[2] != term:
                        continue
                    for impl, r in by_impl.items():
                        if r[quantity] is None or (quantity != "time_s" and impl == "matmul"):
                            continue
                        value = r[quantity] if quantity == "time_s" else max(r[quantity], MEMORY_RESOLUTION)
                        series[impl].append((r[size], value))
                for impl in sorted(series, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99):
                    xs, ys = zip(*sorted(series[impl]))
                    style = "k--" if impl == "matmul" else "-o"
                    ax.plot(xs, [y * unit for y in ys], style, label="matmul (floor)" if impl == "matmul" else impl)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel(letter)
                ax.set_ylabel("time per fwd+bwd step (ms)" if quantity == "time_s" else "peak memory (MiB)")
                ax.set_title(f"{term}: {label} against {letter}")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend()
            fig.tight_layout()
            path = out_dir / f"{label}_vs_{letter}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


# What issues 14 and 25 ask of the whole loss (term "srl", forward + backward) on the CPU: (what, group,
# case label, backend, quantity, bound). Quantities: "floor" = time / the K x N product, "released" =
# the released code's time / the backend's, "memory" = the backend's peak / the released code's.
TARGETS = (
    ("time <= 1.5x the K x N product", "preset", "imdb_wiki", "cpu", "floor", 1.5),
    ("time <= 1.5x the K x N product", "preset", "agedb", "cpu", "floor", 1.5),
    ("time <= 2.0x the K x N product", "preset", "sts_b", "cpu", "floor", 2.0),
    (">= 10x faster than the released code", "preset", "imdb_wiki", "cpu", "released", 10.0),
    ("time <= 1x the K x N product", "large", "K=1000,N=1000000", "cpu", "floor", 1.0),
    ("peak memory <= 1/1000 of the released code's", "large", "K=1000,N=1000000", "cpu", "memory", 1e-3),
)


def _srl_keys(rows: dict) -> list[tuple]:
    """The whole-loss rows of this harness's groups (not, e.g., bench/test_methods_bench.py's),
    but the fixed-cost case: it has a line of its own in the verdict."""
    keys = [k for k in rows if k[2] == "srl" and k[0] in GROUP_TITLES and k[0] != FIXED_GROUP]
    return sorted(keys, key=lambda k: (_sort_key(k)[0], _case_sort(rows, k)))


FIXED_GROUP = "fixed"  # bench/cases.py, FIXED_SIZES: the whole loss with next to nothing to compute


def _fixed_cost(rows: dict, impl: str) -> float | None:
    """`impl`'s time for the whole loss in the fixed-cost case (its fixed per-call cost), if run."""
    for (group, _, term), by_impl in rows.items():
        if group == FIXED_GROUP and term == "srl" and impl in by_impl:
            return by_impl[impl]["time_s"]
    return None


def fixed_cost_lines(rows: dict) -> list[str]:
    """The fixed per-call cost of each implementation: its whole-loss time where there is next to
    nothing to compute."""
    keys = [k for k in rows if k[0] == FIXED_GROUP and k[2] == "srl"]
    if not keys:
        return []
    by_impl = rows[keys[0]]
    first = next(iter(by_impl.values()))
    impls = sorted(by_impl, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99)
    shown = ", ".join(f"{'matmul (floor)' if i == 'matmul' else i} {1e6 * by_impl[i]['time_s']:.3g} us" for i in impls)
    return [f"Fixed per-call cost (the whole loss at (B, K, N) = ({first['batch']}, {first['num_bins']}, "
            f"{first['num_anchors']}), next to nothing to compute; \"fixed\" above: it over the case's floor): {shown}"]


def _fused_impls(by_impl: dict) -> list[str]:
    return sorted((i for i in by_impl if i not in BASELINE_IMPLS), key=lambda i: IMPL_ORDER.index(i)
                  if i in IMPL_ORDER else 99)


def _case_name(rows: dict, key: tuple) -> str:
    first = next(iter(rows[key].values()))
    return f"{key[1]} ({first['batch']}, {first['num_bins']}, {first['num_anchors']})"


def _floor_ratio(row: dict, floor: dict | None) -> float | None:
    """`row`'s time over the K x N product: paired (the two timed alternately) where the run
    measured it, else the ratio of the two rows' own minima."""
    if row.get("paired_floor") is not None:
        return row["paired_floor"]
    return row["time_s"] / floor["time_s"] if floor else None


def _quantity(rows: dict, key: tuple, impl: str, quantity: str) -> float | None:
    by_impl = rows.get(key, {})
    if quantity == "floor" and impl in by_impl:
        return _floor_ratio(by_impl[impl], by_impl.get("matmul"))
    mine, base = by_impl.get(impl), by_impl.get({"floor": "matmul", "released": "released", "memory": "released"}[quantity])
    if mine is None or base is None:
        return None
    if quantity == "released":
        return base["time_s"] / mine["time_s"]
    if mine["memory_bytes"] is None or base["memory_bytes"] is None or base["memory_bytes"] <= 0:
        return None
    return max(mine["memory_bytes"], MEMORY_RESOLUTION) / base["memory_bytes"]  # below resolution: a bound


# The figures of a run are unreliable when the machine had other work: a 1-minute load average
# above machine.BUSY_LOAD_PER_CORE per core before the run, or rounds whose median is this many
# times their minimum.
SPREAD_LIMIT = 1.5


def vector_extensions(meta: dict) -> str:
    """``avx2, avx512f, no amx`` from the CPU flags of the run (a note when not recorded)."""
    return machine.vector_extensions(meta.get("cpu_flags"))


def load_text(meta: dict) -> str:
    before, after = meta.get("load_before"), meta.get("load_after")
    if before is None:
        return "machine load not recorded"
    text = f"load average {before:.2f} before the run"
    return text + (f", {after:.2f} at its end (the bench's own threads included)" if after is not None else "")


def reliability(meta: dict, rows: dict) -> tuple[bool, list[str]]:
    """(reliable, lines): the machine, its load and the spread of the whole loss's rounds, and
    whether other work on the machine makes the figures unreliable."""
    cores = meta.get("cpu_count") or 1
    before = meta.get("load_before")
    spreads = [(r["spread"], _case_name(rows, key), impl) for key in _srl_keys(rows)
               for impl, r in rows[key].items() if r.get("spread")]
    kernels = f"; CPU whole-loss kernels: {meta['cpu_kernels']}" if meta.get("cpu_kernels") else ""
    lines = [f"Machine: {meta.get('cpu_model', '?')} ({vector_extensions(meta)}), {cores} cores{kernels}; "
             f"{load_text(meta)}."]
    worst = max(spreads) if spreads else None
    if worst is not None:
        lines.append(f"Spread of the rounds (median / fastest, whole loss): {min(spreads)[0]:.2f} to {worst[0]:.2f} "
                     f"(widest: {worst[1]} {worst[2]}).")
    reasons = []
    if before is not None and before > machine.BUSY_LOAD_PER_CORE * cores:
        reasons.append(f"the machine was busy (load {before:.2f} on {cores} cores before the run)")
    if worst is not None and worst[0] > SPREAD_LIMIT:
        reasons.append(f"the rounds spread up to {worst[0]:.2f}x")
    if reasons:
        lines.append(f"UNRELIABLE: {' and '.join(reasons)}: other work shared the cores, so times and the ratios "
                     "between backends are distorted. Rerun on a quiet machine (--bench-threads 1 steadies a busy one).")
    return not reasons, lines


def step_share_lines(rows: dict) -> list[str]:
    """Per preset: the whole SRL loss (its fastest fused backend) against one training step of the
    benchmark's model without it (bench/test_training_step.py), as its share of the step with it."""
    lines = []
    for key in _srl_keys(rows):
        group, label, _ = key
        fused = [(rows[key][impl]["time_s"], impl) for impl in _fused_impls(rows[key])]
        if group != "preset" or not fused:
            continue
        srl, impl = min(fused)
        for step_key in sorted(k for k in rows if k[0] == "step" and k[1] == label):
            model = rows[step_key]["model"]  # one row per model of the benchmark (its tag: step_key[2])
            share = srl / (srl + model["time_s"])
            lines.append(f"  {label}: the SRL loss ({impl}, {_ms(srl)} ms) is {100 * share:.2g} % of a training step "
                         f"of its model ({model.get('model') or step_key[2]}: {_ms(model['time_s'])} ms without it)")
    return lines


def verdict(meta: dict, rows: dict, stat: str) -> list[str]:
    """The machine, its load and whether the run is reliable; then one line per case of the whole
    loss: each fused backend's speed-up over the reference and the released code, its time over
    the K x N product, its peak memory over the released code's; then the loss's share of a
    training step per preset, where the step was timed."""
    keys = _srl_keys(rows)
    if not keys:
        return []
    paired = any(r.get("paired_floor") is not None for key in keys for r in rows[key].values())
    floor_text = "the two timed alternately: the floor" if paired else "the floor"
    lines = [
        *reliability(meta, rows)[1],
        f"Whole SRL loss, forward + backward, float32, on {meta.get('device', '?')}"
        f" ({meta.get('torch_threads', '?')} threads; {stat} time of the rounds). Per backend: speed-up over the "
        f"reference / over the released code, time over the K x N product ({floor_text}), peak memory / the released "
        "code's:",
    ]
    width = max(len(_case_name(rows, k)) for k in keys)
    for key in keys:
        by_impl = rows[key]
        ref, rel, floor = by_impl.get("reference"), by_impl.get("released"), by_impl.get("matmul")
        parts = []
        for impl in _fused_impls(by_impl):
            r = by_impl[impl]
            fixed = _fixed_cost(rows, impl)
            fixed_share = f" (fixed {_ratio(fixed, floor and floor['time_s'])}x)" if fixed is not None else ""
            parts.append(
                f"{impl} {_ratio(ref and ref['time_s'], r['time_s'])}x / {_ratio(rel and rel['time_s'], r['time_s'])}x, "
                f"{_ratio(_floor_ratio(r, floor), 1.0)}x floor{fixed_share}, memory "
                f"{_memory_ratio(r['memory_bytes'], rel and rel['memory_bytes'])}"
            )
        lines.append(f"  {_case_name(rows, key):<{width}}  " + (" | ".join(parts) or "no fused backend ran"))
    lines += fixed_cost_lines(rows)
    shares = step_share_lines(rows)
    if shares:
        lines += ["Share of a training step (the model's forward, regression loss, backward and Adam step, plus the "
                  "SRL loss):", *shares]
    return lines


def target_lines(rows: dict, reliable: bool = True) -> list[str]:
    """Each target of TARGETS whose case ran: the measured value, and met or not (marked as
    measured on a busy machine when the run is not ``reliable``)."""
    lines = []
    mark = "" if reliable else " (unreliable run)"
    for what, group, label, impl, quantity, bound in TARGETS:
        key = (group, label, "srl")
        value = _quantity(rows, key, impl, quantity)
        if value is None:
            continue
        met = value >= bound if quantity == "released" else value <= bound
        shown = f"{value:.2g}" if value < 0.01 else f"{value:.2f}"
        unit = {"floor": "x the product", "released": "x faster", "memory": " of the released peak"}[quantity]
        lines.append(f"  {'met' if met else 'NOT MET'}: {label} {impl}, {what}: {shown}{unit}{mark}")
    return lines


def render(meta: dict, rows: dict, stat: str, source: Path, pngs: list[Path]) -> str:
    lines = header(meta, stat, source)
    summary = verdict(meta, rows, stat)
    if summary:
        lines += ["", "## Verdict", "", "```", *summary, *target_lines(rows, reliability(meta, rows)[0]), "```"]
    for group, title in GROUP_TITLES.items():
        if any(k[0] == group for k in rows):
            lines += ["", f"## {title}", "", *table(rows, group)]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


def update_readme(meta: dict, rows: dict, stat: str, source: Path) -> None:
    text = README.read_text()
    if README_START not in text or README_END not in text:
        sys.exit(f"{README} has no {README_START} ... {README_END} markers")
    summary = verdict(meta, rows, stat)
    targets = target_lines(rows, reliability(meta, rows)[0])
    block = "\n".join([*header(meta, stat, source)[2:], "", *(["```", *summary, *targets, "```", ""] if summary else []),
                       *table(rows, "preset")])
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    README.write_text(pattern.sub(lambda _: f"{README_START}\n{block}\n{README_END}", text))


def write(source: Path, output: Path, stat: str = "min", groups: list[str] | None = None,
          with_plots: bool = True) -> tuple[dict, dict, list[Path]]:
    """Write the report of run `source` to `output` (and the PNG plots next to it)."""
    meta, rows = load(source, stat, groups)
    if not rows:
        sys.exit(f"{source}: no benchmarks{' in groups ' + ', '.join(groups) if groups else ''}")
    output.parent.mkdir(parents=True, exist_ok=True)
    pngs = plots(rows, output.parent) if with_plots else []
    output.write_text(render(meta, rows, stat, source, pngs))
    return meta, rows, pngs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "json", nargs="?", type=Path, help="a bench run's JSON (default: the newest in bench/results/raw)"
    )
    parser.add_argument("--output", type=Path, default=RUN_REPORT,
                        help=f"the Markdown file to write (default {RUN_REPORT.relative_to(HERE.parent)}; the tracked "
                             f"quiet-run figures: {QUIET_REPORT.relative_to(HERE.parent)})")
    parser.add_argument("--stat", choices=("min", "median", "mean"), default="min", help="time statistic (default min)")
    parser.add_argument("--group", action="append", choices=list(GROUP_TITLES), help="only these groups (repeatable)")
    parser.add_argument("--no-plots", action="store_true", help="write the table only")
    parser.add_argument("--update-readme", action="store_true", help="also put the preset table into bench/README.md")
    args = parser.parse_args(argv)

    source = args.json or latest_json()
    meta, rows, pngs = write(source, args.output, args.stat, args.group, not args.no_plots)
    print("\n".join(verdict(meta, rows, args.stat) + target_lines(rows, reliability(meta, rows)[0])))
    print(f"wrote {args.output}" + "".join(f", {p.name}" for p in pngs))
    if args.update_readme:
        update_readme(meta, rows, args.stat, source)
        print(f"updated {README}")


if __name__ == "__main__":
    main()

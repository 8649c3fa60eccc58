"""Where the CPU whole-loss op spends its time above its floor, the K x N product, on this CPU.

    python -m bench.floor                          # print the tables
    python -m bench.floor --output bench/results/floor.md --rounds 400

At the tiny size (B, K, N) = (4, 4, 4) (``cases.FIXED_SIZES``) the op does next to no arithmetic: its time there is the
fixed cost of every call. At that size and at the three preset sizes (D = 128, the preset's
settings) it times, interleaved round by round so that noise falls on all alike, the minimum over
the rounds of:

- ``floor``: one K x D by D x N product into a preallocated output (the bench's ``matmul`` row);
- ``step``: forward + backward by the public API (``functional.srl_loss``, then
  ``torch.autograd.grad``): the bench's ``cpu`` row;
- ``op step``: the same through the op's eager entry, ``srl_ext._C.srl_loss``, directly (no
  Python API layer);
- ``engine step``: that with the backward run by the autograd engine directly (no Python layer of
  ``torch.autograd.grad``: torch's own cost, the same for any loss);
- ``op``: the op's forward alone, under ``no_grad`` (no autograd node, no backward), with the
  op's own record of its phases (``srl_ext.ops.srl_loss_phase_times``) at its fastest call;
- ``torch.ops op``: the same through ``torch.ops.srl_ext.srl_loss`` (its generic argument
  parsing, which the eager entry saves: the last column).

The differences place the time: the Python API layer (step - op step), torch.autograd.grad's
Python layer (op step - engine step), the autograd node and the backward (engine step - op), the
Python binding and the dispatcher (op - its phases), and the phases inside the op (the
checks and allocations, the table, the parallel region's start, its slowest part and its join,
the gradients and sums, the outputs). Then the kernel sets (AVX-512, AVX2, the portable
baseline) this CPU supports are timed on the same steps, interleaved, and their numbers compared:
the faster set at the preset sizes is named beside the one the op picks by default
(``srl_ext.ops.cpu_isa``; SRL_EXT_CPU_ISA=avx2 etc. overrides it).

Like ``pytest bench/``, it states the CPU, its vector extensions and the load; figures from a
busy machine say so.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from srl_ext import functional, ops

from . import _measure, cases, machine

SIZES = {  # label: (B, K, N); D = 128 and the settings of the preset
    "fixed (4, 4, 4)": ("sts_b", cases.FIXED_SIZES),
    "sts_b": ("sts_b", {}),
    "agedb": ("agedb", {}),
    "imdb_wiki": ("imdb_wiki", {}),
}
ISAS = ("avx512", "avx2", "baseline")


def _case(label: str) -> cases.Case:
    preset, sizes = SIZES[label]
    case = cases.preset_case(preset, group="floor", **sizes)
    return case


class Steps:
    """The timed callables of one case."""

    def __init__(self, case: cases.Case) -> None:
        inputs = cases.make_inputs(case, torch.device("cpu"))
        s = case.settings
        self.settings = s
        x = inputs.features.detach().clone().requires_grad_()
        detached = inputs.features.detach()
        bins, memory, anchors = inputs.bins, inputs.memory, inputs.anchors
        product = inputs.surrogates.new_empty(case.num_bins, case.num_anchors)
        op = ops._fast_srl_loss  # what functional.srl_loss calls in eager mode
        dispatched = torch.ops.srl_ext.srl_loss.default
        args = (s.w1, s.w2, s.w3, s.temperature, s.homogeneity_sign, s.homogeneity_beta, s.soft_envelope_temperature,
                s.label_weighting)

        def floor():
            torch.mm(inputs.surrogates, anchors.T, out=product)

        def step():
            total = functional.srl_loss(x, bins, memory, anchors, s, backend="cpu").total
            return torch.autograd.grad(total, x)[0]

        def op_step():
            total = op(x, bins, memory, anchors, *args)[0]
            torch.autograd.grad(total, x)

        engine = torch.autograd.Variable._execution_engine
        ones = torch.ones(())

        def op_step_engine():  # the backward without torch.autograd.grad's Python layer
            total = op(x, bins, memory, anchors, *args)[0]
            engine.run_backward((total,), (ones,), False, False, (x,), True, False)

        def op_forward():
            with torch.no_grad():
                op(detached, bins, memory, anchors, *args)

        def dispatched_forward():  # through torch.ops' generic argument parsing
            with torch.no_grad():
                dispatched(detached, bins, memory, anchors, *args)

        self.timed = {"floor": floor, "step": step, "op step": op_step, "engine step": op_step_engine,
                      "op": op_forward, "torch.ops op": dispatched_forward}
        self.step = step
        self.values = lambda: (functional.srl_loss(x, bins, memory, anchors, s, backend="cpu"), step())


def _us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.3g}" if us < 1000 else f"{us:,.0f}"


def breakdown(steps: dict[str, Steps], rounds: int) -> list[str]:
    phase_names = ops.SRL_LOSS_PHASES
    lines = [
        "| size (B, K, N) | floor | step | step / floor | Python API | torch.autograd.grad | autograd node + backward "
        "| binding + dispatcher | " + " | ".join(phase_names) + " | (torch.ops binding instead) |",
        "|---|" + "---:|" * (9 + len(phase_names)),
    ]
    for label, st in steps.items():
        phases: dict[str, float] = {}
        best = _measure.interleaved_minimum(
            st.timed, rounds, after_each={"op": lambda: phases.update(ops.srl_loss_phase_times())}
        )
        in_op = sum(phases.values())
        lines.append("| " + " | ".join([
            label, _us(best["floor"]), _us(best["step"]), f"{best['step'] / best['floor']:.2f}x",
            _us(best["step"] - best["op step"]), _us(best["op step"] - best["engine step"]),
            _us(best["engine step"] - best["op"]), _us(best["op"] - in_op),
            *(_us(phases[name]) for name in phase_names), f"+{_us(best['torch.ops op'] - best['op'])}",
        ]) + " |")
    return lines


def isa_comparison(steps: dict[str, Steps], rounds: int) -> list[str]:
    default = ops.cpu_isa()
    supported = []
    for isa in ISAS:
        try:
            ops.cpu_isa(isa)
            supported.append(isa)
        except ValueError:
            pass
    lines = [
        "| size (B, K, N) | " + " | ".join(f"{isa} step" for isa in supported) + " | same numbers |",
        "|---|" + "---:|" * len(supported) + "---|",
    ]
    totals = dict.fromkeys(supported, 0.0)
    try:
        for label, st in steps.items():
            results = {}
            for isa in supported:
                ops.cpu_isa(isa)
                losses, grad = st.values()
                results[isa] = torch.cat([torch.stack(tuple(losses)), grad.flatten()]).detach()
            same = [isa for isa in supported if torch.equal(results[isa], results[supported[0]])]
            differ = {isa: float((results[isa] - results[supported[0]]).abs().max()) for isa in supported
                      if isa not in same}
            best = _measure.interleaved_minimum(
                {isa: st.step for isa in supported}, rounds,
                before_each={isa: (lambda isa=isa: ops.cpu_isa(isa)) for isa in supported},
            )
            if not label.startswith("fixed"):
                for isa in supported:
                    totals[isa] += best[isa]
            agreement = "identical" if not differ else "; ".join(
                f"{isa} differs by up to {value:.2g}" for isa, value in differ.items())
            lines.append(f"| {label} | " + " | ".join(_us(best[isa]) for isa in supported) + f" | {agreement} |")
    finally:
        ops.cpu_isa(default)
    fastest = min(totals, key=totals.get)
    lines.append("")
    summary = ", ".join(f"{isa} {_us(totals[isa])} us" for isa in supported)
    verdict = ("the default is the faster set" if fastest == default else
               f"the default is not the faster set here: SRL_EXT_CPU_ISA={fastest} picks it")
    lines.append(f"Kernel sets, the three preset steps summed: {summary}. Faster: {fastest}; the op's default on this "
                 f"CPU: {default}: {verdict} (differences under a few % are noise on a shared machine).")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per function (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not ops.available():
        raise SystemExit(f"error: the compiled ops are needed: {ops.LOAD_ERROR}")

    load_before = machine.load_average()
    steps = {label: Steps(_case(label)) for label in SIZES}
    table = breakdown(steps, args.rounds)
    isa = isa_comparison(steps, args.rounds)
    load_after = machine.load_average()
    busy = load_before is not None and load_before > machine.BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)
    lines = [
        "# The CPU whole-loss op against its floor",
        "",
        f"- Machine: {machine.description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {load_before} before, {load_after} after (this script's own threads included)"
        + (" - UNRELIABLE: the machine was busy before the run" if busy else "") + ".",
        f"- Command: `python -m bench.floor --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else "") + "`; times in microseconds, the minimum over "
        "the rounds; float32, D = 128, each preset's settings.",
        "- step = forward + backward by `functional.srl_loss` (the bench's `cpu` row); floor = the K x N product "
        "(its `matmul` row). Python API = step - the op's eager entry (`srl_ext._C.srl_loss`) called directly with "
        "autograd; torch.autograd.grad = that - the same with the engine's backward called directly; autograd node "
        "+ backward = that - the op's forward alone; binding + dispatcher = that - the op's phases. The last column:"
        " what the op's forward costs more through `torch.ops.srl_ext.srl_loss` (its generic argument parsing). The phases (csrc/cpu/srl_loss.cpp, "
        "Phase) are those of the op's fastest call and add up to it; region_start, parts and join follow the part "
        "that ended last.",
        "- At (4, 4, 4) there is next to nothing to compute: its step is the fixed cost of every call.",
        "",
        "## Where the time goes",
        "",
        *table,
        "",
        "## Kernel sets (forward + backward steps)",
        "",
        *isa,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

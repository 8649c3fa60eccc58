"""Peak memory of one benchmark step, recorded next to its timings; and paired timing.

Paired timing (``interleaved_minimum``): functions timed alternately, one call of each per round,
so that a change of the machine's speed during the run (a shared host's neighbours) falls on all
of them alike; a ratio of their minima is then steadier than one of minima timed minutes apart.

CUDA: ``torch.cuda.max_memory_allocated`` over one step, minus what was allocated before it
(the inputs): the caching allocator's exact peak of live tensors.

CPU: there is no allocator peak to read, so the step runs once in its own fresh process and the
kernel's count of resident memory is read: ``VmHWM`` (peak resident set) minus ``VmRSS`` just
before the step, after the inputs are made and the high-water mark is reset (writing 5 to
/proc/self/clear_refs). That is the physical memory the step itself added at its peak: saved
activations, temporaries, gradients, thread-local buffers, whatever allocator holds them. A
fresh process matters: in a process that already ran other cases, freed memory kept by malloc
would hide part of the peak. The processes are forked from a forkserver that imported torch once
(``multiprocessing`` forkserver), so each costs milliseconds, not a torch import. Before the
measured step the child runs the same step once at a tiny size, so that one-time costs (thread
pools, library initialisation) are not charged to the case.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from dataclasses import replace

import torch

from . import cases

CPU_METHOD = "peak RSS added by one step, in its own forked process (VmHWM - VmRSS)"
CUDA_METHOD = "torch.cuda.max_memory_allocated over one step, minus the memory allocated before it"


def cuda_peak_bytes(step) -> int:
    """Peak of live CUDA tensors added by one call of `step` (the inputs already allocated)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)


def _tiny(case: cases.Case) -> cases.Case:
    return replace(
        case, batch=min(case.batch, 8), num_bins=min(case.num_bins, 8), num_anchors=min(case.num_anchors, 64)
    )


def cpu_peak_in_this_process(benchmark: cases.Benchmark, threads: int) -> dict[str, int]:
    """Runs in the child: warm up at a tiny size, make the inputs, reset the peak, one step."""
    torch.set_num_threads(threads)  # as the parent: the fused kernels keep a buffer per thread
    case = benchmark.case
    device = torch.device("cpu")
    cases.make_step(benchmark.term, benchmark.impl, cases.make_inputs(_tiny(case), device, False), _tiny(case))()
    # The anchors' values do not change the memory a step takes, so the tie-free redraw is skipped.
    step = cases.make_step(benchmark.term, benchmark.impl, cases.make_inputs(case, device, tie_free=False), case)
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak_rss()
    step()
    peak = _status_kib("VmHWM")
    return {"peak_bytes": (peak - before) * 1024, "rss_before_bytes": before * 1024}


def _child(connection, benchmark: cases.Benchmark, threads: int) -> None:
    try:
        connection.send(("ok", cpu_peak_in_this_process(benchmark, threads)))
    except BaseException as error:  # report it to the parent rather than die silently
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # The server imports torch, srl_ext and the bench once; every child is forked from it.
        _context.set_forkserver_preload(["bench._measure"])
    return _context


def cpu_peak_bytes(benchmark: cases.Benchmark, timeout_s: float = 900.0) -> int:
    """The step's peak added RSS, measured in a fresh child process (see the module docstring)."""
    context = _forkserver()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(send, benchmark, torch.get_num_threads()), name=f"srl-bench-memory {benchmark.id}"
    )
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise RuntimeError(f"{benchmark.id}: the memory measurement took over {timeout_s} s")
        status, result = receive.recv()
    except EOFError:
        child.join()
        raise RuntimeError(
            f"{benchmark.id}: the memory measurement process died (exit code {child.exitcode}; "
            "out of memory?)"
        ) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if status != "ok":
        raise RuntimeError(f"{benchmark.id}: the memory measurement failed: {result}")
    return result["peak_bytes"]


def interleaved_minimum(functions: dict, rounds: int, before_each: dict | None = None,
                        after_each: dict | None = None) -> dict[str, float]:
    """The minimum time of each function over `rounds` rounds, one call of each per round."""
    best = dict.fromkeys(functions, float("inf"))
    for name, fn in functions.items():  # warm-up: buffers, thread pool, first-call costs
        (before_each or {}).get(name, lambda: None)()
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in functions.items():
            (before_each or {}).get(name, lambda: None)()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if elapsed < best[name]:
                best[name] = elapsed
                if after_each and name in after_each:
                    after_each[name]()
    return best

"""Benchmark the CIF backends: ext (C++/CUDA op), torch-vectorised, reference loop, torch-cif.

    python -m w2p.bin.benchmark_cif [--device cpu|cuda] [--json out.json] [--shapes 8x250x512,...] [--repeats N]

For every shape (B, T, C) and backend it prints the median and min forward ms and forward+backward
ms, the bytes the cell must move, the achieved GB/s, its percentage of the copy bandwidth measured
in the same run, and the peak extra memory of one forward+backward (CUDA: allocator peak; CPU: peak
of the live tensor bytes recorded by the torch profiler at op granularity).  The workload is the
training call: alphas in [0.05, 0.95], lengths 80-100% of T, target_lengths = floor(sum alpha), and
the backward of the loss (out * w).sum(), fed as grad_outputs = w (the same gradients, without
timing an elementwise product and its backward that are not part of CIF).  The reference loop is
slow: it runs once (1 repeat) and only on shapes with B*T <= --reference-max-frames; its other cells
are printed as "skipped".  On CPU, glibc is told to keep freed memory (see keep_freed_memory;
--no-malloc-cache to measure with page faults).

Bytes a cell must move (the same for every backend; s = element size, sum(L) = valid frames,
U = max output length):
    forward   s * (sum(L)*C + B*T + B*U*C) + 8*B*U
              read the valid hidden frames and alphas, write out (B, U, C) and fire_frames (int64)
    backward  s * (B*U*C + sum(L)*C + B*T*C + 2*B*T)
              read grad_out and the valid hidden frames (d loss / d alpha needs <grad_out, hidden>),
              write grad_hidden (padding included), read alphas, write grad_alphas
    fwd+bwd   the sum of the two
GB/s = bytes / time; "% copy" divides it by the copy bandwidth: the best of --repeats timed
dst.copy_(src) of --copy-mb MB (bytes = 2 x size: read + write) at the same thread count, measured
before and after the cells (the better of the two is used, the stricter roofline).  "% peak" divides
it by the device's datasheet memory bandwidth (--peak-gbs, or looked up from the CUDA device name:
PEAK_GBS; absent on CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

DEFAULT_SHAPES = "8x250x512,16x500x512,16x500x1024,32x1000x1024"
# datasheet HBM bandwidth (GB/s) by a substring of torch.cuda.get_device_name(); the first match wins
PEAK_GBS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("A100-SXM4-80GB", 2039.0),
            ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0), ("A10G", 600.0), ("V100", 900.0))


def peak_bandwidth(device, override: float | None = None) -> float | None:
    """The device's datasheet memory bandwidth in GB/s (None on CPU or for an unknown GPU without --peak-gbs)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbs for key, gbs in PEAK_GBS if key in name), None)
BACKENDS = ("ext", "torch", "reference", "torch-cif")
LABELS = {"ext": "ext", "torch": "torch-vectorised", "reference": "reference loop", "torch-cif": "torch-cif 0.2.0"}


def keep_freed_memory():
    """Ask glibc to keep freed blocks in the heap (no mmap / trim for big blocks), so repeated
    calls reuse memory instead of page-faulting fresh pages.  On this kind of VM a fault costs
    ~4 us, i.e. ~16 ms per 16 MB gradient, which would swamp every backend's compute; a real
    training loop reuses its memory the same way.  Returns False where mallopt is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt takes a C int
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def parse_shapes(text: str):
    shapes = []
    for part in text.split(","):
        try:
            b, t, c = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"benchmark_cif: bad shape {part!r}; use BxTxC, e.g. 16x500x512") from None
        shapes.append((b, t, c))
    return shapes


def make_inputs(shape, device, dtype, seed=0):
    B, T, C = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype)
    alphas = (torch.rand(B, T, generator=g) * 0.9 + 0.05).to(dtype)
    lengths = torch.randint(int(0.8 * T), T + 1, (B,), generator=g)
    lengths[0] = T
    valid = torch.arange(T)[None] < lengths[:, None]
    target = (alphas.double() * valid).sum(1).floor().long().clamp_min(1)
    w = torch.randn(B, int(target.max()), C, generator=g, dtype=dtype)
    return [x.to(device) for x in (hidden, alphas, lengths, target, w)]


def make_fn(backend, hidden, alphas, lengths, target):
    from w2p.cif import cif

    if backend == "torch-cif":
        from torch_cif import cif_function

        pad = torch.arange(hidden.shape[1], device=hidden.device)[None] >= lengths[:, None]
        return lambda h, a: cif_function(h, a, padding_mask=pad, target_lengths=target)["cif_out"][0]
    return lambda h, a: cif(h, a, lengths, target_lengths=target, backend=backend).out


def cell_bytes(shape, lengths, U, itemsize):
    """(forward, backward) bytes one call must move; the formula is in the module docstring."""
    B, T, C = shape
    valid = int(lengths.sum())
    fwd = itemsize * (valid * C + B * T + B * U * C) + 8 * B * U
    bwd = itemsize * (B * U * C + valid * C + B * T * C + 2 * B * T)
    return fwd, bwd


def copy_bandwidth(device, megabytes, repeats):
    """Best and median GB/s of dst.copy_(src) for two float32 buffers of `megabytes` MB each
    (read + write = 2 x size), at the current thread count."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    med_ms, min_ms = time_call(lambda: dst.copy_(src), device, max(repeats, 3))
    nbytes = 2 * n * 4
    return nbytes / (min_ms * 1e6), nbytes / (med_ms * 1e6)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def peak_extra_bytes(step, device):
    """Peak bytes allocated above the level before `step` ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # allocations are attributed to the op that made them (self bytes), frees after an op show
    # up as "[memory]" events: replaying them in time order gives the live-bytes curve at op
    # granularity (buffers a C++ op allocates outside the torch allocator are not seen)
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def bench_one(backend, shape, device, dtype, repeats):
    hidden, alphas, lengths, target, w = make_inputs(shape, device, dtype)
    fn = make_fn(backend, hidden, alphas, lengths, target)
    h = hidden.clone().requires_grad_()
    a = alphas.clone().requires_grad_()

    def fwd():
        return fn(h, a)

    def fwd_bwd():
        out = fn(h, a)
        torch.autograd.grad(out, (h, a), w[:, : out.shape[1]])  # = grad of (out * w).sum()

    warm = repeats > 1
    if warm:
        fwd_bwd()
    f_ms, f_min = time_call(fwd, device, repeats)
    fb_ms, fb_min = time_call(fwd_bwd, device, repeats)
    peak = peak_extra_bytes(fwd_bwd, device)
    fwd_b, bwd_b = cell_bytes(shape, lengths, w.shape[1], hidden.element_size())
    return {"fwd_ms": f_ms, "fwd_bwd_ms": fb_ms, "fwd_min_ms": f_min, "fwd_bwd_min_ms": fb_min,
            "peak_extra_mb": peak / 2**20, "repeats": repeats, "fwd_bytes": fwd_b, "fwd_bwd_bytes": fwd_b + bwd_b}


def format_table(results, shapes, copy_gbs, peak_gbs=None):
    """One line per (shape, backend); GB/s, % copy and % peak are given for the median / the min time."""
    lines = [f"{'shape (B,T,C)':<15} {'backend':<16} {'fwd ms':>13} {'fwd GB/s':>11} {'fwd+bwd ms':>15}"
             f" {'MB':>6} {'GB/s':>11} {'% copy':>11} {'% peak':>11} {'peak MB':>8} {'ext speed-up':>13}",
             f"{'':<15} {'':<16} {'med/min':>13} {'med/min':>11} {'med/min':>15}"
             f" {'':>6} {'med/min':>11} {'med/min':>11} {'med/min':>11} {'':>8} {'med/min':>13}"]
    for shape in shapes:
        key = "x".join(map(str, shape))
        ext = results.get(key, {}).get("ext")
        for backend in BACKENDS:
            r = results.get(key, {}).get(backend)
            name = f"({shape[0]},{shape[1]},{shape[2]})"
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"{name:<15} {LABELS[backend]:<16} {'skipped: ' + r['skipped']}")
                continue
            speed = ""
            if ext and "fwd_bwd_ms" in ext and backend != "ext":
                speed = (f"{r['fwd_bwd_ms'] / ext['fwd_bwd_ms']:.1f}x/"
                         f"{r['fwd_bwd_min_ms'] / ext['fwd_bwd_min_ms']:.1f}x")
            note = " (1 run)" if r["repeats"] == 1 else ""
            fb_bytes = r["fwd_bwd_bytes"]
            gbs = [fb_bytes / (r[k] * 1e6) for k in ("fwd_bwd_ms", "fwd_bwd_min_ms")]
            fwd_gbs = [r["fwd_bytes"] / (r[k] * 1e6) for k in ("fwd_ms", "fwd_min_ms")]
            lines.append(f"{name:<15} {LABELS[backend]:<16} {r['fwd_ms']:>6.2f}/{r['fwd_min_ms']:<6.2f}"
                         f" {fwd_gbs[0]:>5.1f}/{fwd_gbs[1]:<5.1f} {r['fwd_bwd_ms']:>7.2f}/{r['fwd_bwd_min_ms']:<7.2f}"
                         f" {fb_bytes / 1e6:>6.1f} {gbs[0]:>5.1f}/{gbs[1]:<5.1f}"
                         f" {100 * gbs[0] / copy_gbs:>5.1f}/{100 * gbs[1] / copy_gbs:<5.1f}"
                         + (f" {100 * gbs[0] / peak_gbs:>5.1f}/{100 * gbs[1] / peak_gbs:<5.1f}" if peak_gbs else
                            f" {'-':>11}") +
                         f" {r['peak_extra_mb']:>8.1f} {speed:>13}{note}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma-separated BxTxC (default {DEFAULT_SHAPES})")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per cell (median reported)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    p.add_argument("--reference-max-frames", type=int, default=8000,
                   help="run the reference loop only where B*T <= this (default 8000; -1: always)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    p.add_argument("--copy-mb", type=int, default=256,
                   help="size of each buffer of the copy-bandwidth measurement (default 256 MB)")
    p.add_argument("--no-malloc-cache", action="store_true",
                   help="CPU: leave glibc's default (fresh pages, i.e. page faults, for every big tensor)")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="device memory bandwidth for the %% peak column (default: datasheet value by GPU name)")
    p.add_argument("--json", help="also write the results here (atomically)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark_cif: --device cuda requested but torch has no CUDA device here")
    dtype = getattr(torch, args.dtype)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    malloc_cache = device.type == "cpu" and not args.no_malloc_cache and keep_freed_memory()
    shapes = parse_shapes(args.shapes)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"benchmark_cif: unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    from w2p import _ext

    _ext.load()
    copy_before = copy_bandwidth(device, args.copy_mb, args.repeats)
    results = {}
    for shape in shapes:
        key = "x".join(map(str, shape))
        results[key] = {}
        for backend in backends:
            too_long = args.reference_max_frames >= 0 and shape[0] * shape[1] > args.reference_max_frames
            if backend == "reference" and too_long:
                results[key][backend] = {"skipped": f"B*T > {args.reference_max_frames} (slow loop)"}
                continue
            repeats = 1 if backend == "reference" else args.repeats
            try:
                results[key][backend] = bench_one(backend, shape, device, dtype, repeats)
            except (RuntimeError, ValueError, AssertionError, ImportError) as exc:
                results[key][backend] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
            print(f"done {key} {backend}", file=sys.stderr, flush=True)
    copy_after = copy_bandwidth(device, args.copy_mb, args.repeats)
    copy_gbs = max(copy_before[0], copy_after[0])
    peak = peak_bandwidth(device, args.peak_gbs)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"CIF benchmark: device={device} ({dev_name}), dtype={args.dtype}, threads={torch.get_num_threads()}, "
              f"repeats={args.repeats} (median/min; reference loop 1 run), malloc_cache={malloc_cache}, "
              "training call with target_lengths\n"
              f"copy bandwidth ({args.copy_mb} MB dst.copy_(src), best/median GB/s): before "
              f"{copy_before[0]:.1f}/{copy_before[1]:.1f}, after {copy_after[0]:.1f}/{copy_after[1]:.1f}; "
              f"roofline = {copy_gbs:.1f} GB/s; peak (datasheet) = "
              f"{f'{peak:.0f} GB/s' if peak else 'unknown (--peak-gbs)'}")
    print(header)
    print(format_table(results, shapes, copy_gbs, peak))
    if args.json:
        payload = {"device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "malloc_cache": malloc_cache, "results": results,
                   "device_name": dev_name, "peak_gbs": peak,
                   "copy_gbs": {"before_best": copy_before[0], "before_median": copy_before[1],
                                "after_best": copy_after[0], "after_median": copy_after[1], "roofline": copy_gbs}}
        from w2p.io import write_json

        write_json(args.json, payload, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

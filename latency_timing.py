"""How latency is timed on a real, noisy machine: the measurement protocol
shared by building tables, validating them and timing whole networks.

A CPU in a shared virtual machine drifts: the same network, timed for a
minute on an idle 2-core VM, moved by +-7% between 4-second blocks. Timing
every module once and moving on would bake that drift into whichever entries
happened to be measured during a slow spell. The protocol therefore:

1. runs many short rounds; each round calls every module once, in a fresh
   random order, so a burst of load spreads over all modules;
2. times a fixed reference network (LightNet-24ms at the same batch size)
   once in every round, and divides each module's time by the reference's
   time in that round: a slow spell slows both, and the ratio stays. The
   stored value is the median ratio times the reference's median over the
   whole session (or over several sessions, when networks are timed in
   chunks), so values keep their unit;
3. pins the thread count (torch intra-op threads, or ONNX Runtime's
   intra-op pool), flushes subnormal floats to zero (random weights can
   underflow into them; trained networks do not), keeps glibc's malloc
   from handing large activations back to the OS after every call (see
   steady_allocator), and warms up for a fixed time before timing;
4. keeps each entry's spread (p10/p90) and the reference's own jitter and
   drift, which say how noisy the machine was.

Two runtimes time the same modules: PyTorch eager, and ONNX Runtime's CPU
execution provider (each module exported to ONNX in memory first).
"""


import contextlib
import ctypes
import ctypes.util
import functools
import io
import os
import platform
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import model_train
from latency_predictor import Probe
from operations import INPUT_SIZE
from utils import UserError, resolve_device

# Protocol defaults (build and validate share them).
DEFAULT_CPU_THREADS = 1  # one intra-op thread: batch-1 blocks barely scale and a shared 2-core box stays quiet
DEFAULT_WARMUP_S = 3.0  # time-based: caches, allocator and CPU clocks settle before timing
DEFAULT_CHUNK = 32  # whole networks held in memory at once (about 30 MB each)
SPREAD_PERCENTILES = (10, 90)  # per-entry spread recorded next to the median
SPREAD_NAMES = tuple(f"p{percentile}" for percentile in SPREAD_PERCENTILES)
REFERENCE_NETWORK = "LightNet-24ms"
DRIFT_BLOCKS = 10  # the reference's median in this many consecutive blocks of rounds gives its drift
# CPU clocks. "thread" is the CPU time of the calling thread: with one
# intra-op thread the forward runs on that thread alone, so on an idle core it
# equals the wall-clock latency, and on a shared machine the time the thread
# spends preempted by other processes is left out.
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
DEFAULT_CLOCK = "wall"
RUNTIMES = ("torch", "onnxruntime")
DEFAULT_RUNTIME = "torch"
ONNX_OPSET = 17  # HardSwish and friends export as single ops from opset 14 on


class Protocol(NamedTuple):
    """How modules are timed."""

    device: torch.device
    batch_size: int
    threads: int  # torch intra-op threads, or ONNX Runtime's intra-op pool
    clock: str  # a CLOCKS name (CPU); CUDA always times with events
    warmup_s: float
    repeats: int  # timed rounds
    seed: int
    runtime: str = DEFAULT_RUNTIME
    reference: bool = True  # normalise every round by the reference network's time in it


def make_protocol(device_name, batch_size, threads, clock, warmup_s, repeats, seed, runtime=DEFAULT_RUNTIME,
                  reference=True):
    """A Protocol from command-line values, refusing impossible ones."""
    device = resolve_device(device_name)
    if min(batch_size, threads, repeats) < 1 or not warmup_s >= 0:
        raise UserError("--batch_size, --threads and --repeats must be at least 1, --warmup_s at least 0")
    if clock not in CLOCKS:
        raise UserError(f"--clock: unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    if clock == "thread" and (device.type != "cpu" or threads != 1):
        raise UserError("--clock thread counts only the calling thread's CPU time; "
                        "use it with --device cpu --threads 1")
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime: unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise UserError("--runtime onnxruntime times ONNX Runtime's CPU execution provider; use --device cpu")
        import_onnxruntime()
    return Protocol(device, batch_size, threads, clock, warmup_s, repeats, seed, runtime, reference)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--runtime onnxruntime: onnxruntime is not installed; pip install onnxruntime "
                        "(or use --runtime torch)") from None
    return onnxruntime


# glibc mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
STEADY_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap; free heap above 1 GiB is trimmed


@functools.cache
def steady_allocator():
    """Make glibc's malloc serve large blocks from its heap and keep them.

    By default a block above a threshold that glibc moves at run time is
    mmap-ed fresh and unmapped on free, so each call pays page faults for
    its large activations, or not, depending on what was allocated before.
    Timed interleaved with other networks, LightNets with MBK3E6 in layer 1
    (a 96x112x112 activation) ran 10-17% slower in 11 of 16 processes on a
    2-core Xeon VM, and in none of 7 with this setting; a deployed network,
    run on its own, keeps its memory warm. Set once per process; returns
    whether it took effect (it does nothing off glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    limit = ctypes.c_int(STEADY_MMAP_THRESHOLD)
    return bool(mallopt(M_MMAP_THRESHOLD, limit) and mallopt(M_TRIM_THRESHOLD, limit))


@contextlib.contextmanager
def flushed_denormals():
    """Compute with subnormal floats flushed to zero, then switch that off
    again, PyTorch's default (its CPU kernels; ONNX Runtime sets its own)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def torch_threads(threads):
    """Run with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------ descriptions


def cpu_model_name():
    """The CPU model and where the name came from."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip(), "/proc/cpuinfo 'model name'"
    except OSError:
        pass
    return platform.processor() or platform.machine(), "platform.processor()"


def describe_device(device):
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "identified_by": "torch.cuda.get_device_name()", "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    name, source = cpu_model_name()
    return {"type": "cpu", "name": name, "identified_by": source, "logical_cpus": os.cpu_count()}


def describe_runtime(runtime):
    description = {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__}
    if runtime == "onnxruntime":
        description.update(name="ONNX Runtime, CPU execution provider", onnxruntime=import_onnxruntime().__version__,
                           opset=ONNX_OPSET, graph_optimization="ORT_ENABLE_ALL", execution_mode="sequential")
    else:
        description["name"] = "PyTorch eager"
    return description


def describe_protocol(protocol):
    if protocol.device.type == "cuda":
        timer = "CUDA events around each call, torch.cuda.synchronize() before"
    elif protocol.clock == "thread":
        timer = "time.thread_time() around each call: CPU time of the (only) computing thread"
    else:
        timer = "time.perf_counter() around each call"
    reference = (f"{REFERENCE_NETWORK} timed once per round; each time divided by the reference's time in the "
                 "same round, times the reference's median over the session" if protocol.reference else "none")
    metadata = {"mode": "eval(), torch.no_grad()", "runtime": protocol.runtime, "clock": protocol.clock,
                "denormals": "flushed to zero (random weights can underflow into slow subnormal floats)",
                "allocator": f"glibc mallopt: blocks up to {STEADY_MMAP_THRESHOLD >> 20} MiB from the heap, "
                             f"never trimmed ({'in effect' if steady_allocator() else 'not available here'})",
                "timer": timer, "warmup_s": protocol.warmup_s, "repeats": protocol.repeats, "seed": protocol.seed,
                "order": "interleaved rounds: every round calls each module once, in a fresh random order",
                "reference": reference, "statistic": "median", "spread": "/".join(SPREAD_NAMES) + " per entry",
                "input": "torch.randn, batch_size x C x H x W at the module's input shape"}
    if protocol.device.type == "cuda":
        metadata["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return metadata


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------- runners


def torch_runner(module, inputs):
    module = module.eval()

    def call():
        with torch.no_grad():
            module(inputs)
    return call


def onnxruntime_runner(module, inputs, threads):
    """Export `module` to ONNX in memory and return a call of an ONNX Runtime
    session pinned to `threads` intra-op threads."""
    onnxruntime = import_onnxruntime()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (deprecated in favour of one that needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (inputs,), buffer, input_names=["input"], output_names=["output"],
                          opset_version=ONNX_OPSET, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as flushed_denormals() for PyTorch
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"input": inputs.numpy()}
    return lambda: session.run(None, feed)


def make_runners(probes, protocol):
    generator = torch.Generator().manual_seed(protocol.seed)
    runners = []
    for probe in probes:
        inputs = torch.randn(protocol.batch_size, *probe.input_shape, generator=generator)
        if protocol.runtime == "onnxruntime":
            runners.append(onnxruntime_runner(probe.module, inputs, protocol.threads))
        else:
            runners.append(torch_runner(probe.module.to(protocol.device), inputs.to(protocol.device)))
    return runners


def timed_call(call, protocol):
    """One call, in ms: the protocol's clock on CPU; CUDA events bracketing
    the call after a synchronize on GPU (kernels run asynchronously)."""
    if protocol.device.type == "cuda":
        torch.cuda.synchronize(protocol.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    clock = CLOCKS[protocol.clock]
    start = clock()
    call()
    return (clock() - start) * 1e3


# ------------------------------------------------------------- measuring


class Timings(NamedTuple):
    """Raw times (ms) of one session, shape (rounds, probes), and the
    reference's time in each round (ms, shape (rounds,)), or None."""

    samples: np.ndarray
    reference: np.ndarray


def reference_probe(num_classes):
    network = model_train.LightNet(model_train.LIGHTNETS[REFERENCE_NETWORK], num_classes=num_classes)
    return Probe((REFERENCE_NETWORK,), network, (3, INPUT_SIZE, INPUT_SIZE))


def measure(probes, protocol, desc, num_classes=model_train.IMAGENET_CLASSES):
    """Time every probe in `protocol.repeats` interleaved rounds (with the
    reference network when the protocol asks for it). Warm-up is
    time-based: whole rounds until `warmup_s` has passed, at least one."""
    order_rng = np.random.default_rng(protocol.seed)
    steady_allocator()
    timed = list(probes) + ([reference_probe(num_classes)] if protocol.reference else [])
    with torch_threads(protocol.threads), flushed_denormals():
        runners = make_runners(timed, protocol)
        started = time.perf_counter()
        while True:
            for call in runners:
                timed_call(call, protocol)
            if time.perf_counter() - started >= protocol.warmup_s:
                break
        samples = np.empty((protocol.repeats, len(timed)))
        for round_index in tqdm(range(protocol.repeats), desc=desc, unit="round"):
            for index in order_rng.permutation(len(timed)):
                samples[round_index, index] = timed_call(runners[index], protocol)
    if protocol.reference:
        return Timings(samples[:, :-1], samples[:, -1])
    return Timings(samples, None)


def reference_level(sessions):
    """The reference's median over one or more sessions (ms)."""
    return float(np.median(np.concatenate([session.reference for session in sessions])))


def normalized_samples(timings, level):
    """Each round's times divided by the reference's time in that round,
    times `level`; the raw times when there is no reference."""
    if timings.reference is None:
        return timings.samples
    return timings.samples / timings.reference[:, None] * level


def sample_statistics(samples):
    """Median and spread of one probe's times, as stored in a table entry."""
    spread = np.percentile(samples, SPREAD_PERCENTILES)
    statistics = {"value": round(float(np.median(samples)), 6)}
    statistics.update((name, round(float(value), 6)) for name, value in zip(SPREAD_NAMES, spread))
    return statistics


def session_statistics(sessions, level=None):
    """Per-probe statistics over chunks timed in separate sessions, all
    scaled to one reference level: `level` (ms), e.g. the reference's median
    when a table was built, so drift since then cancels; by default the
    reference's median over these sessions."""
    if sessions[0].reference is not None and level is None:
        level = reference_level(sessions)
    statistics = []
    for session in sessions:
        normalized = normalized_samples(session, level)
        statistics += [sample_statistics(normalized[:, index]) for index in range(normalized.shape[1])]
    return statistics


def relative_spread_pct(samples):
    low, high = np.percentile(samples, SPREAD_PERCENTILES)
    return float((high - low) / np.median(samples) * 100)


def drift_pct(samples, blocks=DRIFT_BLOCKS):
    """(max - min) / median of the medians of consecutive blocks of rounds."""
    medians = [np.median(block) for block in np.array_split(samples, min(blocks, len(samples)))]
    return float((max(medians) - min(medians)) / np.median(samples) * 100)


def noise_report(sessions):
    """How noisy the machine was while timing: the reference's round-to-round
    jitter and its drift between blocks of rounds (percent)."""
    if sessions[0].reference is None:
        return {"reference": None}
    reference = np.concatenate([session.reference for session in sessions])
    return {"reference": REFERENCE_NETWORK, "reference_median_ms": round(float(np.median(reference)), 4),
            "reference_jitter_pct": round(relative_spread_pct(reference), 2),
            "reference_drift_pct": round(drift_pct(reference), 2),
            "jitter": "(p90 - p10) / median of the reference's time per round",
            "drift": f"(max - min) / median of the reference's medians over {DRIFT_BLOCKS} consecutive blocks "
                     "of rounds"}


# ---------------------------------------------------------- whole networks


def network_probes(arch_configs, num_classes):
    return [Probe((" ".join(arch_config),), model_train.LightNet(arch_config, num_classes=num_classes),
                  (3, INPUT_SIZE, INPUT_SIZE)) for arch_config in arch_configs]


def time_networks(arch_configs, protocol, num_classes, chunk=DEFAULT_CHUNK):
    """Time whole networks (any op of the registry, SE included), `chunk`
    at a time; returns one Timings per chunk."""
    sessions = []
    for start in range(0, len(arch_configs), chunk):
        part = arch_configs[start:start + chunk]
        sessions.append(measure(network_probes(part, num_classes), protocol._replace(seed=protocol.seed + start),
                                desc=f"networks {start + 1}-{start + len(part)}", num_classes=num_classes))
    return sessions


def measure_arch_configs(arch_configs, protocol, num_classes, level=None):
    """Median and spread (ms) of every network, on one reference level (see
    session_statistics)."""
    return session_statistics(time_networks(arch_configs, protocol, num_classes), level)

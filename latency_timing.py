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

A deployed network runs on its own, in a process of its own. Run as a
script, this module times one network that way (a fresh process, nothing
else in it, a fixed warm-up, the median of a number of calls), and
`time_in_fresh_processes` runs it once per network: under the deployment
condition a table states (DEPLOYMENT_ENV: the same allocator setting as
steady_allocator, given before the process starts) or in a plain process.

    python3 latency_timing.py --arch_config LightNet-24ms
"""


import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch

import model_train
from latency_predictor import REFERENCE_NETWORK, Probe
from operations import INPUT_SIZE
from utils import (MAX_BATCH_SIZE, MAX_CLASSES, MAX_SEED, UserError, check_number_rules, progress_bar, resolve_device,
                   run_cli)

# Protocol defaults (build and validate share them).
DEFAULT_CPU_THREADS = 1  # one intra-op thread: batch-1 blocks barely scale and a shared 2-core box stays quiet
DEFAULT_WARMUP_S = 3.0  # time-based: caches, allocator and CPU clocks settle before timing
DEFAULT_CHUNK = 32  # whole networks held in memory at once (about 30 MB each)
SPREAD_PERCENTILES = (10, 90)  # per-entry spread recorded next to the median
SPREAD_NAMES = tuple(f"p{percentile}" for percentile in SPREAD_PERCENTILES)
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


MAX_WARMUP_S = 600.0  # ten minutes of calls before timing is a typo, not a protocol
MAX_CALLS = 1_000_000
MAX_REPEATS = 1_000
MAX_THREADS = 1_024
MAX_NETWORKS = 1_000_000  # random networks a table is fitted, validated or checked on


def unset_or(test):
    """A rule's test for an option whose None means "the default applies"."""
    return lambda value: value is None or test(value)


# The timing and table command lines' numbers (latency_timing.py and every
# latency_build.py subcommand): what each must be (utils.check_number_rules).
TIMING_NUMBER_RULES = tuple((names, unset_or(test), description) for names, test, description in (
    (("warmup_s",), lambda value: 0 <= value <= MAX_WARMUP_S, f"in [0, {MAX_WARMUP_S:g}] seconds"),
    (("calls",), lambda value: 1 <= value <= MAX_CALLS, f"in [1, {MAX_CALLS:,}]"),
    (("repeats",), lambda value: 1 <= value <= MAX_REPEATS, f"in [1, {MAX_REPEATS:,}]"),
    (("threads",), lambda value: 1 <= value <= MAX_THREADS, f"in [1, {MAX_THREADS:,}]"),
    (("batch_size",), lambda value: 1 <= value <= MAX_BATCH_SIZE, f"in [1, {MAX_BATCH_SIZE:,}]"),
    (("num_classes",), lambda value: 1 <= value <= MAX_CLASSES, f"in [1, {MAX_CLASSES:,}]"),
    (("seed",), lambda value: 0 <= value <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    (("num_train", "num_holdout", "num_networks", "num_archs"), lambda value: 1 <= value <= MAX_NETWORKS,
     f"in [1, {MAX_NETWORKS:,}]"),
))


def make_protocol(device_name, batch_size, threads, clock, warmup_s, repeats, seed, runtime=DEFAULT_RUNTIME,
                  reference=True):
    """A Protocol from command-line values, refusing impossible ones."""
    device = resolve_device(device_name)
    if min(batch_size, threads, repeats) < 1 or not warmup_s >= 0:
        raise UserError("--batch_size, --threads and --repeats must be at least 1, --warmup_s at least 0")
    cores = os.cpu_count() or 1
    if device.type == "cpu" and threads > cores:  # as for OMP_NUM_THREADS (utils.check_thread_setting)
        print(f"warning: --threads {threads} on {cores} cores: the threads wait for each other, so the times "
              f"measure contention, not the network; use at most {cores}", file=sys.stderr)
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
# The same setting for a process about to start (glibc >= 2.26 reads it at start-up): the deployment
# condition CPU tables are measured under, and the line a user puts before their own command.
DEPLOYMENT_ENV = {"GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={STEADY_MMAP_THRESHOLD}:"
                                    f"glibc.malloc.trim_threshold={STEADY_MMAP_THRESHOLD}"}
PROBE_BLOCK = 64 << 20  # above the largest threshold glibc ever picks by itself (32 MiB on 64-bit)


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_keeps_large_blocks():
    """Whether the steady setting is in effect in this process, seen from
    what malloc does rather than from what was asked: a 64 MiB block comes
    from the heap (True) or is mmap-ed (False; glibc's own thresholds never
    exceed 32 MiB). None where this is not glibc >= 2.33."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2, malloc, free = libc.mallinfo2, libc.malloc, libc.free
    except (OSError, AttributeError):
        return None
    mallinfo2.restype, malloc.restype, malloc.argtypes = _MallInfo2, ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]
    mapped_before = mallinfo2().hblks
    block = malloc(PROBE_BLOCK)  # never touched: no pages are faulted in
    if not block:
        return None
    mapped = mallinfo2().hblks > mapped_before
    free(block)
    return not mapped


def env_line(settings):
    """Environment variables as a shell prefix: NAME=value NAME=value."""
    return " ".join(f"{name}={value}" for name, value in settings.items())


def deployment_line(threads):
    """What a user puts before their own command for a CPU table to hold."""
    return env_line(dict(DEPLOYMENT_ENV, OMP_NUM_THREADS=str(threads)))


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
    else:
        metadata["condition"] = {
            "env": dict(DEPLOYMENT_ENV), "line": deployment_line(protocol.threads),
            "meaning": "the table predicts a network run alone in a process started with these variables (the "
                       "allocator setting above, given at start-up); PyTorch eager in a plain process pays page "
                       "faults for its large activations on every call and runs slower"}
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
        # Through timed_call: on a GPU it synchronizes, so warm-up time is time the kernels ran.
        warm_up([functools.partial(timed_call, call, protocol) for call in runners], protocol.warmup_s)
        samples = np.empty((protocol.repeats, len(timed)))
        for round_index in progress_bar(range(protocol.repeats), desc=desc, unit="round"):
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


# ------------------------------------------- one network, as deployed

ALONE_CALLS = 50  # timed calls; their median is the network's latency
CONDITIONS = ("deployment", "plain")  # under DEPLOYMENT_ENV, or a process as Python starts it


def minor_page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_up(calls, seconds):
    """Call each of `calls` in turn until `seconds` have passed (once at least)."""
    started = time.perf_counter()
    while True:
        for call in calls:
            call()
        if time.perf_counter() - started >= seconds:
            return


def time_alone(arch_config, protocol, num_classes, with_reference=False):
    """Time one network the way a deployed script runs it: built alone in
    this process, the protocol's threads, a fixed warm-up, then
    `protocol.repeats` calls on the wall clock. Returns the median, the spread and the minor page
    faults per timed call (a call that maps its activations afresh faults
    them in). `with_reference` then builds the reference network and times
    the two in alternating calls: the median ratio of each pair, times the
    reference's level when a table was built, is this network's time with
    the machine's drift (which moves a 2-core VM by +-10% within seconds)
    taken out."""
    network = model_train.LightNet(arch_config, num_classes=num_classes)
    calls = protocol.repeats
    with torch_threads(protocol.threads), flushed_denormals():
        call, = make_runners([Probe(("network",), network, (3, INPUT_SIZE, INPUT_SIZE))], protocol)
        warm_up([call], protocol.warmup_s)
        faults_before = minor_page_faults()
        samples = np.array([timed_call(call, protocol) for _ in range(calls)])
        faults = minor_page_faults() - faults_before
        result = sample_statistics(samples)
        result.update(page_faults_per_call=round(faults / calls, 1), calls=calls,
                      heap_keeps_large_blocks=heap_keeps_large_blocks())
        if with_reference:
            reference_call, = make_runners([reference_probe(num_classes)], protocol)
            warm_up([call, reference_call], protocol.warmup_s / 2)  # the network is warm already
            pairs = np.array([(timed_call(call, protocol), timed_call(reference_call, protocol))
                              for _ in range(calls)])
            result.update(ratio_to_reference=round(float(np.median(pairs[:, 0] / pairs[:, 1])), 6),
                          reference_ms=round(float(np.median(pairs[:, 1])), 6))
    return result


def fresh_process_env(condition):
    """The environment of a fresh timing process: this one's, with the
    deployment setting added, or with it removed (plain)."""
    env = {name: value for name, value in os.environ.items() if name not in DEPLOYMENT_ENV}
    if condition == "deployment":
        env.update(DEPLOYMENT_ENV)
    return env


def time_in_fresh_process(arch_config, protocol, num_classes, condition, calls=ALONE_CALLS, with_reference=False):
    """time_alone in a new Python process started under `condition`, with the
    protocol's runtime, batch size, threads, warm-up and seed; refuses a
    result whose allocator is not the one asked for."""
    if condition not in CONDITIONS:
        raise UserError(f"unknown process condition {condition!r}; known: {', '.join(CONDITIONS)}")
    command = [sys.executable, os.path.abspath(__file__), "--arch_config", json.dumps(list(arch_config)),
               "--runtime", protocol.runtime, "--batch_size", str(protocol.batch_size), "--threads",
               str(protocol.threads), "--warmup_s", str(protocol.warmup_s), "--calls", str(calls), "--seed",
               str(protocol.seed), "--num_classes", str(num_classes), "--json"]
    command += ["--with_reference"] if with_reference else []
    completed = subprocess.run(command, env=fresh_process_env(condition), capture_output=True, text=True)
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"timing a network in a fresh process failed (exit {completed.returncode}): {last_line}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    kept = result["heap_keeps_large_blocks"]
    if kept is not None and kept != (condition == "deployment"):
        raise UserError(f"a fresh process started {'with' if condition == 'deployment' else 'without'} "
                        f"{env_line(DEPLOYMENT_ENV)} "
                        f"{'did not keep' if condition == 'deployment' else 'kept'} large blocks on its heap: this "
                        "C library does not follow the setting, so the tables' condition cannot be reproduced here")
    return result


def time_in_fresh_processes(arch_configs, protocol, num_classes, condition, calls=ALONE_CALLS,
                            with_reference=False, desc=None):
    """time_in_fresh_process for each network, one process each."""
    return [time_in_fresh_process(arch_config, protocol, num_classes, condition, calls, with_reference)
            for arch_config in progress_bar(arch_configs, desc=desc or f"fresh processes ({condition})",
                                            unit="network")]


def at_reference_level(results, level):
    """The ms of each fresh-process result (timed with_reference) had the
    machine run at `level`, the reference network's ms when a table was
    built: its ratio to the reference, paired call by call, times the level.
    This is how drift of the machine's speed is taken out."""
    return np.array([result["ratio_to_reference"] for result in results]) * level


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Time one network on this CPU as a deployed script runs it: alone in this process.",
        epilog="For the time a CPU table predicts, start it under the table's condition: "
               f"{deployment_line(DEFAULT_CPU_THREADS)} python3 latency_timing.py ...")
    parser.add_argument("--arch_config", default=REFERENCE_NETWORK,
                        help=f"a LightNet name, a JSON file or the list's string form (default: {REFERENCE_NETWORK})")
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME, help=f"default: {DEFAULT_RUNTIME}")
    parser.add_argument("--batch_size", type=int, default=1, help="images per call (default: 1)")
    parser.add_argument("--threads", type=int, default=DEFAULT_CPU_THREADS,
                        help=f"intra-op threads (default: {DEFAULT_CPU_THREADS})")
    parser.add_argument("--warmup_s", type=float, default=DEFAULT_WARMUP_S,
                        help=f"seconds of calls before timing (default: {DEFAULT_WARMUP_S:g})")
    parser.add_argument("--calls", type=int, default=ALONE_CALLS, help=f"timed calls (default: {ALONE_CALLS})")
    parser.add_argument("--seed", type=int, default=0, help="weights and input (default: 0)")
    parser.add_argument("--num_classes", type=int, default=model_train.IMAGENET_CLASSES,
                        help=f"classifier outputs (default: {model_train.IMAGENET_CLASSES})")
    parser.add_argument("--with_reference", action="store_true",
                        help=f"afterwards, time {REFERENCE_NETWORK} in alternating calls with the network and "
                             "report the median ratio (the machine's drift cancels in it)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a sentence")
    return parser


def main(args):
    check_number_rules(args, TIMING_NUMBER_RULES)
    arch_config = model_train.resolve_arch_config(args.arch_config)
    if args.num_classes < 1:
        raise UserError("--num_classes must be at least 1")
    protocol = make_protocol("cpu", args.batch_size, args.threads, "wall", args.warmup_s, args.calls, args.seed,
                             args.runtime, reference=False)
    torch.manual_seed(args.seed)
    result = time_alone(arch_config, protocol, args.num_classes, args.with_reference)
    if args.json:
        print(json.dumps(result))
        return
    allocator = {True: "large blocks kept on the heap (the tables' condition)",
                 False: "glibc's default allocator (a plain process)", None: "allocator unknown (not glibc)"}
    print(f"{result['value']:.2f} ms, median of {args.calls} calls (p10 {result['p10']:.2f}, p90 {result['p90']:.2f}); "
          f"{result['page_faults_per_call']:.0f} page faults per call; {allocator[result['heap_keeps_large_blocks']]}")
    if args.with_reference:
        print(f"{result['ratio_to_reference']:.4f} x {REFERENCE_NETWORK} ({result['reference_ms']:.2f} ms) "
              "in alternating calls")


if __name__ == "__main__":
    run_cli(main, get_args_parser())

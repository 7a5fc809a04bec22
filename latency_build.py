"""Making cost tables: measuring ops on a device, deriving the Jetson table
from the authors' latency MLP, validating a table against whole networks
timed end to end, and calibrating it; and the command line of
`latency_predictor.py` (build, validate, calibrate, predict, from-mlp),
which runs this module's `main`.

Tables, keys, predictors and `load_predictor` live in `latency_predictor.py`;
everything here writes or checks what that module reads.
"""


import argparse
import contextlib
import csv
import datetime
import os
import platform
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import model_train
import operations
from latency_predictor import (DEFAULT_LUT, FIT_HOLDOUT_ARCHS, FIT_SEED, FIT_TRAIN_ARCHS, MLPPredictor, Probe,
                               TablePredictor, arch_to_text, base_metadata, entries_from_values, fit_additive,
                               fixed_probes, layer_keys, layer_probes, load_predictor, load_table, new_table,
                               rounded_value, sample_architectures, table_predictor, text_to_arch, write_table)
from operations import INPUT_SIZE, LAYOUT, NUM_LAYERS, NUM_SEARCHABLE_LAYERS
from utils import UserError, new_figure, resolve_device, run_cli, save_figure, write_csv

# Authors' measurement set-up (their README and release).
JETSON_BATCH_SIZE = 8
JETSON_PROTOCOL = "per network: 5 warm-up runs, 6 timed runs, mean of the fastest two thirds (authors)"

# Measurement protocol defaults (build and validate share them).
DEFAULT_CPU_THREADS = 1  # one intra-op thread: batch-1 blocks barely scale and a shared 2-core box stays quiet
DEFAULT_WARMUP_S = 3.0  # time-based: caches, allocator and CPU clocks settle before timing
DEFAULT_BUILD_REPEATS = 1000  # rounds over every module: 2-3 minutes for a full CPU table at 1 thread
DEFAULT_VALIDATE_ARCHS = 30
DEFAULT_VALIDATE_REPEATS = 60  # rounds over the networks being validated
VALIDATE_CHUNK = 32  # networks held in memory at once (about 30 MB each)
SPREAD_PERCENTILES = (10, 90)  # per-entry spread recorded next to the median
SPREAD_NAMES = tuple(f"p{percentile}" for percentile in SPREAD_PERCENTILES)
MEASURE_SEED = 0
VALIDATE_SEED = 1  # not the fit/build seed, so validation sees fresh architectures
# CPU clocks. "thread" is the CPU time of the calling thread: with one
# intra-op thread the forward runs on that thread alone, so on an idle core it
# equals the wall-clock latency, and on a shared machine the time the thread
# spends preempted by other processes is left out (preemption inflates long
# calls more than short ones, which would bias whole networks against ops).
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
DEFAULT_CLOCK = "wall"

ERROR_THRESHOLDS_PCT = (5, 10)  # "share within 5% / 10%" in validation summaries
SUMMARY_DECIMALS = 4  # error summaries stored in table metadata
MIN_CALIBRATION_ARCHS = 5  # a scale and an offset from fewer points would fit noise


def error_summary(predicted, measured):
    """Relative errors of predictions against measurements (in percent), and R^2."""
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    errors = np.abs(predicted - measured) / measured * 100
    residual = ((predicted - measured) ** 2).sum()
    spread = ((measured - measured.mean()) ** 2).sum()
    summary = {"count": int(len(measured)), "mean_abs_pct": errors.mean(),
               "p95_abs_pct": np.percentile(errors, 95), "max_abs_pct": errors.max(),
               "r2": 1 - residual / spread if spread > 0 else float("nan")}
    for threshold in ERROR_THRESHOLDS_PCT:
        summary[f"within_{threshold}_pct"] = (errors <= threshold).mean() * 100
    return {name: value if name == "count" else round(float(value), SUMMARY_DECIMALS)
            for name, value in summary.items()}


def format_summary(summary):
    within = "  ".join(f"within {threshold}%: {summary[f'within_{threshold}_pct']:5.1f}%"
                       for threshold in ERROR_THRESHOLDS_PCT)
    return (f"mean |err| {summary['mean_abs_pct']:6.2f}%  max |err| {summary['max_abs_pct']:6.2f}%  "
            f"{within}  R^2 {summary['r2']:.4f}  (n={summary['count']})")


def derive_table_from_mlp(mlp, num_train, num_holdout, seed):
    """The additive table that reproduces the authors' MLP, with its fit
    statistics on held-out architectures and on the six LightNets."""
    architectures = sample_architectures(num_train + num_holdout, seed)
    train, holdout = architectures[:num_train], architectures[num_train:]
    constant, layer_costs = fit_additive(train, mlp.costs(train))
    table = _table_from_matrix(constant, layer_costs, _mlp_metadata(mlp))
    additive = TablePredictor(table, "fit")
    lightnets = {name: [round(mlp.cost(model_train.LIGHTNETS[name]), 4),
                        round(additive.cost(model_train.LIGHTNETS[name]), 4), published]
                 for name, published in model_train.README_LATENCY_MS.items()}
    fit = {"train_archs": num_train, "holdout_archs": num_holdout, "seed": seed,
           "holdout_vs_mlp": error_summary(additive.costs(holdout), mlp.costs(holdout)),
           "lightnets_mlp_table_published_ms": lightnets}
    table["metadata"]["fit"] = fit
    return table


def _table_from_matrix(constant, layer_costs, metadata):
    entries = {key: {"value": rounded_value(layer_costs[row, column])}
               for row, keys in enumerate(layer_keys()) for column, key in enumerate(keys)}
    return new_table(metadata, {"value": rounded_value(constant)}, entries)


def skip_anchor_note():
    """Why SkipConnect is 0 ms in every layer of a table fitted to the MLP."""
    projecting = [str(layer) for layer in range(1, NUM_LAYERS)
                  if LAYOUT[layer].stride != 1 or LAYOUT[layer].in_channels != LAYOUT[layer].out_channels]
    return ("an additive fit only determines each layer's costs up to a constant, so SkipConnect is 0 ms in "
            f"every layer: exact for the {NUM_SEARCHABLE_LAYERS - len(projecting)} identity layers; in the "
            f"{len(projecting)} layers where SkipConnect is a strided or widening 1x1 conv "
            f"({', '.join(projecting)}) its cost sits in 'fixed' and the layer's other entries are relative "
            "to it. Totals are unaffected, and so is the search: a per-layer constant cancels in the softmax "
            "gradient.")


def _mlp_metadata(mlp):
    metadata = base_metadata("latency", JETSON_BATCH_SIZE, model_train.IMAGENET_CLASSES, threads=None)
    metadata.update(
        device={"type": "jetson", "name": "NVIDIA Jetson AGX Xavier",
                "identified_by": "the LightNAS authors' release (README)"},
        runtime={"name": "PyTorch on the Jetson (authors' measurement)", "fit_with_torch": torch.__version__},
        protocol={"description": JETSON_PROTOCOL},
        source={"kind": "derived", "from": "the authors' latency MLP (additive least-squares fit)",
                "file": os.path.basename(mlp.path), "sha256": mlp.sha256, "anchor": skip_anchor_note(),
                "fixed_part": "'fixed' is the fit's constant: stem, layer 0, head, classifier and the "
                              "projecting SkipConnects; it cannot be split into components"},
    )
    return metadata


@contextlib.contextmanager
def torch_threads(threads):
    """Run with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def _runtime():
    return {"name": "PyTorch eager", "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__}


class Protocol(NamedTuple):
    """How build and validate time modules."""

    device: torch.device
    batch_size: int
    threads: int  # torch intra-op threads
    clock: str  # a CLOCKS name (CPU); CUDA always times with events
    warmup_s: float
    repeats: int
    seed: int


def make_protocol(device_name, batch_size, threads, clock, warmup_s, repeats, seed):
    """A Protocol from command-line values, refusing impossible ones."""
    device = resolve_device(device_name)
    if min(batch_size, threads, repeats) < 1 or warmup_s < 0:
        raise UserError("--batch_size, --threads and --repeats must be at least 1, --warmup_s at least 0")
    if clock not in CLOCKS:
        raise UserError(f"--clock: unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    if clock == "thread" and (device.type != "cpu" or threads != 1):
        raise UserError("--clock thread counts only the calling thread's CPU time; "
                        "use it with --device cpu --threads 1")
    return Protocol(device, batch_size, threads, clock, warmup_s, repeats, seed)


def _timed_call(module, inputs, protocol):
    """One forward, in ms: the protocol's clock on CPU; CUDA events
    bracketing the call after a synchronize on GPU (kernels run
    asynchronously)."""
    if protocol.device.type == "cuda":
        torch.cuda.synchronize(protocol.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        module(inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    clock = CLOCKS[protocol.clock]
    start = clock()
    module(inputs)
    return (clock() - start) * 1e3


def measure(probes, protocol, desc):
    """Time every probe `protocol.repeats` times; returns ms, shape
    (repeats, probes).

    Rounds are interleaved: each round calls every module once, in a fresh
    random order, so a burst of load elsewhere spreads over all entries
    instead of corrupting a few. Warm-up is time-based (whole rounds until
    `warmup_s` has passed, at least one).
    """
    generator = torch.Generator().manual_seed(protocol.seed)
    order_rng = np.random.default_rng(protocol.seed)
    modules = [probe.module.eval().to(protocol.device) for probe in probes]
    inputs = [torch.randn(protocol.batch_size, *probe.input_shape, generator=generator).to(protocol.device)
              for probe in probes]
    samples = np.empty((protocol.repeats, len(probes)))
    with torch_threads(protocol.threads), torch.no_grad():
        started = time.perf_counter()
        while True:
            for module, batch in zip(modules, inputs):
                _timed_call(module, batch, protocol)
            if time.perf_counter() - started >= protocol.warmup_s:
                break
        for round_index in tqdm(range(protocol.repeats), desc=desc, unit="round"):
            for index in order_rng.permutation(len(probes)):
                samples[round_index, index] = _timed_call(modules[index], inputs[index], protocol)
    return samples


def sample_statistics(samples):
    """Median and spread of one probe's times, as stored in a table entry."""
    spread = np.percentile(samples, SPREAD_PERCENTILES)
    statistics = {"value": rounded_value(np.median(samples))}
    statistics.update((name, rounded_value(value)) for name, value in zip(SPREAD_NAMES, spread))
    return statistics


def _protocol_metadata(protocol):
    if protocol.device.type == "cuda":
        timer = "CUDA events around each call, torch.cuda.synchronize() before"
    elif protocol.clock == "thread":
        timer = "time.thread_time() around each call: CPU time of the (only) computing thread"
    else:
        timer = "time.perf_counter() around each call"
    metadata = {"mode": "eval(), torch.no_grad()", "clock": protocol.clock, "timer": timer,
                "warmup_s": protocol.warmup_s, "repeats": protocol.repeats, "seed": protocol.seed,
                "order": "interleaved rounds: every round calls each module once, in a fresh random order",
                "statistic": "median", "spread": "/".join(SPREAD_NAMES) + " per entry",
                "input": "torch.randn, batch_size x C x H x W at the layer's input shape",
                "shared_shapes": "layers with the same op and shape share one measurement"}
    if protocol.device.type == "cuda":
        metadata["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return metadata


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def build_latency_table(protocol, num_classes):
    """Measure the fixed part and every (layer, op) with `protocol`."""
    probes = fixed_probes(num_classes) + layer_probes()
    load_before = _load_average()
    started = time.perf_counter()
    samples = measure(probes, protocol, desc="build")
    seconds = time.perf_counter() - started
    statistics = [sample_statistics(samples[:, index]) for index in range(len(probes))]
    entries, components = entries_from_values(probes, statistics, num_classes)
    low_name, high_name = SPREAD_NAMES
    spreads = [(entry[high_name] - entry[low_name]) / entry["value"] * 100 for entry in statistics]
    metadata = base_metadata("latency", protocol.batch_size, num_classes, protocol.threads)
    metadata.update(
        device=describe_device(protocol.device),
        runtime=_runtime(),
        protocol=_protocol_metadata(protocol),
        source={"kind": "measured"},
        noise={"relative_spread_pct": f"({high_name} - {low_name}) / median",
               "median_over_entries": round(float(np.median(spreads)), 2),
               "p90_over_entries": round(float(np.percentile(spreads, 90)), 2)},
        build_seconds=round(seconds, 1),
        load_average_1min={"before": load_before, "after": _load_average()},
    )
    fixed = {"value": rounded_value(sum(entry["value"] for entry in components.values())), "components": components}
    return new_table(metadata, fixed, entries)


def network_probes(arch_configs, num_classes):
    return [Probe((" ".join(arch_config),), model_train.LightNet(arch_config, num_classes=num_classes),
                  (3, INPUT_SIZE, INPUT_SIZE)) for arch_config in arch_configs]


def measure_arch_configs(arch_configs, protocol, num_classes):
    """End-to-end time of whole networks (ms), any op of the registry
    (SE included): median and spread per network, with the table builder's
    protocol."""
    statistics = []
    for start in range(0, len(arch_configs), VALIDATE_CHUNK):
        chunk = arch_configs[start:start + VALIDATE_CHUNK]
        samples = measure(network_probes(chunk, num_classes), protocol._replace(seed=protocol.seed + start),
                          desc=f"networks {start + 1}-{start + len(chunk)}")
        statistics += [sample_statistics(samples[:, index]) for index in range(len(chunk))]
    return statistics


def measure_networks(indices, protocol, num_classes):
    """measure_arch_configs for searchable-op index rows."""
    return measure_arch_configs([operations.indices_to_arch(row) for row in indices], protocol, num_classes)


# ------------------------------------------------------------ subcommands


def run_from_mlp(args):
    mlp = MLPPredictor(args.mlp)
    table = derive_table_from_mlp(mlp, args.num_train, args.num_holdout, args.seed)
    table["metadata"]["source"]["command"] = _command_line(args)
    write_table(table, args.out)
    fit = table["metadata"]["fit"]
    print(f"fitted constant + 21x7 costs to {args.num_train} random architectures; "
          f"on {args.num_holdout} held-out ones vs the MLP:")
    print("  " + format_summary(fit["holdout_vs_mlp"]))
    print(f"{'network':<15} {'MLP ms':>8} {'table ms':>9} {'published ms':>13}")
    for name, (mlp_ms, table_ms, published_ms) in fit["lightnets_mlp_table_published_ms"].items():
        print(f"{name:<15} {mlp_ms:8.2f} {table_ms:9.2f} {published_ms:13.1f}")
    print(f"wrote {args.out}")


def run_build(args):
    protocol = make_protocol(args.device, args.batch_size, args.threads, args.clock, args.warmup_s,
                             args.repeats, args.seed)
    if args.num_classes < 1:
        raise UserError("--num_classes must be at least 1")
    table = build_latency_table(protocol, args.num_classes)
    table["metadata"]["source"]["command"] = _command_line(args)
    write_table(table, args.out)
    metadata = table["metadata"]
    predictor = TablePredictor(table, os.path.basename(args.out))
    low, high = predictor.feasible_range()
    print(f"{metadata['device']['name']} ({protocol.device.type}), batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.clock} clock: "
          f"built in {metadata['build_seconds']:.0f} s; fixed part {table['fixed']['value']:.3f} ms; "
          f"range {low:.2f}-{high:.2f} ms; median entry spread {metadata['noise']['median_over_entries']:.1f}%")
    print(f"wrote {args.out}")


def run_validate(args):
    predictor = table_predictor(args.lut)
    metadata = predictor.metadata
    if predictor.metric != "latency":
        raise UserError(f"--lut {args.lut}: validate measures latency; this table predicts {predictor.metric}")
    if metadata["device"].get("type") != resolve_device(args.device).type:
        raise UserError(f"--lut {args.lut} was measured on {metadata['device'].get('name')} "
                        f"({metadata['device'].get('type')}); validate it there, not on {args.device}")
    if args.num_archs < MIN_CALIBRATION_ARCHS:
        raise UserError(f"--num_archs must be at least {MIN_CALIBRATION_ARCHS}: fewer held-out networks say "
                        "nothing about a table (and cannot calibrate it)")
    protocol = validation_protocol(metadata, args.device, args.threads, args.clock, args.warmup_s, args.repeats,
                                   args.seed)
    print(f"measuring {args.num_archs} random architectures end to end on {describe_device(protocol.device)['name']}: "
          f"batch {protocol.batch_size}, {protocol.threads} thread(s), {protocol.clock} clock, "
          f"{protocol.repeats} rounds (1-min load average {_load_average()})", flush=True)
    indices = sample_architectures(args.num_archs, args.seed)
    measured = measure_networks(indices, protocol, metadata["num_classes"])
    out_dir = args.out_dir or os.path.join("runs", "validate-" + os.path.splitext(os.path.basename(args.lut))[0])
    report_validation(predictor, indices, measured, out_dir)


def validation_protocol(metadata, device_name, threads, clock, warmup_s, repeats, seed):
    """The table's batch size, threads and clock unless overridden."""
    threads = threads or metadata["threads"] or DEFAULT_CPU_THREADS
    clock = clock or metadata["protocol"].get("clock", DEFAULT_CLOCK)
    return make_protocol(device_name, metadata["batch_size"], threads, clock, warmup_s, repeats, seed)


def report_validation(predictor, indices, measured, out_dir):
    """Print predicted vs measured, write validate.csv and validate.png."""
    medians = np.array([entry["value"] for entry in measured])
    raw, calibrated = predictor.raw_costs(indices), predictor.costs(indices)
    is_calibrated = "calibration" in predictor.metadata
    print(f"{'arch':>4} {'measured ms':>12} {'predicted ms':>13} {'err %':>7}"
          + (f" {'calibrated ms':>14} {'err %':>7}" if is_calibrated else ""))
    for number, (measured_ms, raw_ms, calibrated_ms) in enumerate(zip(medians, raw, calibrated)):
        row = f"{number:>4} {measured_ms:12.3f} {raw_ms:13.3f} {(raw_ms / measured_ms - 1) * 100:7.1f}"
        if is_calibrated:
            row += f" {calibrated_ms:14.3f} {(calibrated_ms / measured_ms - 1) * 100:7.1f}"
        print(row)
    print(f"table {predictor.identifier} vs end-to-end measurement:")
    print("  uncalibrated: " + format_summary(error_summary(raw, medians)))
    if is_calibrated:
        print("  calibrated:   " + format_summary(error_summary(calibrated, medians)))
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "validate.csv")
    write_csv(csv_path, ["arch", "measured_ms"] + [f"measured_{name}_ms" for name in SPREAD_NAMES]
              + ["predicted_raw_ms", "predicted_ms"],
              [[arch_to_text(row), entry["value"]] + [entry[name] for name in SPREAD_NAMES]
               + [rounded_value(raw_ms), rounded_value(calibrated_ms)]
               for row, entry, raw_ms, calibrated_ms in zip(indices, measured, raw, calibrated)])
    png_path = os.path.join(out_dir, "validate.png")
    plot_validation(medians, raw, calibrated if is_calibrated else None, predictor.identifier, png_path)
    print(f"wrote {csv_path} and {png_path}")


def plot_validation(measured, raw, calibrated, title, path):
    figure, axes = new_figure((5, 5))
    axes.scatter(measured, raw, s=14, label="table")
    if calibrated is not None:
        axes.scatter(measured, calibrated, s=14, marker="x", label="table, calibrated")
    values = np.concatenate([measured, raw] + ([calibrated] if calibrated is not None else []))
    limits = (values.min() * 0.95, values.max() * 1.05)
    axes.plot(limits, limits, color="gray", linewidth=1, label="predicted = measured")
    axes.set(xlim=limits, ylim=limits, xlabel="measured latency (ms)", ylabel="predicted latency (ms)", title=title)
    axes.legend()
    save_figure(figure, path)


def read_measurements(path):
    """(op indices, measured ms) from a validate.csv."""
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        indices = np.array([text_to_arch(row["arch"]) for row in rows], dtype=np.int64)
        measured = np.array([float(row["measured_ms"]) for row in rows])
    except FileNotFoundError:
        raise UserError(f"--measurements {path} not found") from None
    except (KeyError, ValueError, TypeError, AttributeError, csv.Error, UserError):
        raise UserError(f"--measurements {path}: expected the validate.csv written by `validate` "
                        f"(columns arch, measured_ms)") from None
    return indices, measured


def calibrate_table(table, indices, measured, sources):
    """Fit measured = scale * raw prediction + offset and store it in the
    table's metadata; returns the before/after summaries."""
    if len(measured) < MIN_CALIBRATION_ARCHS:
        raise UserError(f"calibration needs at least {MIN_CALIBRATION_ARCHS} measured architectures, "
                        f"got {len(measured)}")
    metadata = table["metadata"]
    raw = TablePredictor(table, "raw").raw_costs(indices)
    scale, offset = np.polyfit(raw, measured, 1)
    if not scale > 0:
        raise UserError(f"calibration: measured latency does not grow with the prediction (scale {scale:.3f}); "
                        "the measurements do not fit this table")
    before, after = error_summary(raw, measured), error_summary(scale * raw + offset, measured)
    metadata["calibration"] = {
        "model": "calibrated = scale * table total + offset", "scale": round(float(scale), 6),
        "offset": rounded_value(offset), "fitted_on": list(sources), "num_measurements": int(len(measured)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "before": before, "after": after}
    return before, after


def run_calibrate(args):
    table = load_table(args.lut)
    # Several validate runs may be pooled: on a shared machine one run can
    # catch a burst of load that the others average out.
    runs = [read_measurements(path) for path in args.measurements]
    indices = np.concatenate([run_indices for run_indices, _ in runs])
    measured = np.concatenate([run_measured for _, run_measured in runs])
    before, after = calibrate_table(table, indices, measured, args.measurements)
    out = args.out or args.lut
    write_table(table, out)
    calibration = table["metadata"]["calibration"]
    print(f"calibration: {calibration['scale']:.4f} x table + {calibration['offset']:.4f} "
          f"{table['metadata']['unit']} from {len(measured)} measurements")
    print("  before: " + format_summary(before))
    print("  after:  " + format_summary(after))
    print(f"wrote {out}")


def run_predict(args):
    predictor = load_predictor(args.lut)
    arch_config = model_train.resolve_arch_config(args.arch_config)
    total = predictor.cost(arch_config)
    if args.verbose and isinstance(predictor, TablePredictor):
        for label, name, value in predictor.breakdown(arch_config):
            print(f"{label:>9}  {name:<46} {value:10.4f} {predictor.unit}")
        if predictor.scale != 1.0 or predictor.offset != 0.0:
            print(f"calibration: {predictor.scale:.4f} x {predictor.raw_cost(arch_config):.4f} "
                  f"+ {predictor.offset:.4f}")
    elif args.verbose:
        print("the MLP has no per-layer breakdown; use its additive table for one")
    print(f"{predictor.identifier}: {total:.3f} {predictor.unit} ({predictor.metric})")


# -------------------------------------------------------------------- CLI


def get_args_parser():
    parser = argparse.ArgumentParser(description="Build, check and query LightNAS cost tables.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from_mlp = commands.add_parser("from-mlp", help="derive the Jetson table from the authors' latency MLP")
    from_mlp.add_argument("--mlp", required=True, help="the authors' .pth.tar predictor")
    from_mlp.add_argument("--out", required=True, help="table to write (.json)")
    from_mlp.add_argument("--num_train", type=int, default=FIT_TRAIN_ARCHS,
                          help=f"random architectures to fit on (default: {FIT_TRAIN_ARCHS})")
    from_mlp.add_argument("--num_holdout", type=int, default=FIT_HOLDOUT_ARCHS,
                          help=f"random architectures to test the fit on (default: {FIT_HOLDOUT_ARCHS})")
    from_mlp.add_argument("--seed", type=int, default=FIT_SEED,
                          help=f"architecture sampling seed (default: {FIT_SEED})")
    from_mlp.set_defaults(handler=run_from_mlp)

    build = commands.add_parser("build", help="measure a latency table on this machine")
    build.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    build.add_argument("--batch_size", type=int, default=1, help="images per forward (default: 1)")
    build.add_argument("--threads", type=int, default=DEFAULT_CPU_THREADS,
                       help=f"torch intra-op threads (default: {DEFAULT_CPU_THREADS})")
    build.add_argument("--clock", choices=tuple(CLOCKS), default=DEFAULT_CLOCK,
                       help="CPU timer: wall (perf_counter) or thread (CPU time of the computing thread, "
                            f"immune to preemption on a shared machine; needs --threads 1) (default: {DEFAULT_CLOCK})")
    _add_measurement_args(build, DEFAULT_BUILD_REPEATS, MEASURE_SEED)
    build.add_argument("--num_classes", type=int, default=model_train.IMAGENET_CLASSES,
                       help="classifier outputs of the deployed network (default: 1000)")
    build.add_argument("--out", required=True, help="table to write (.json)")
    build.set_defaults(handler=run_build)

    validate = commands.add_parser("validate", help="compare a table with end-to-end measurements")
    validate.add_argument("--lut", required=True, help="latency table (.json)")
    validate.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    validate.add_argument("--num_archs", type=int, default=DEFAULT_VALIDATE_ARCHS,
                          help=f"random architectures to measure (default: {DEFAULT_VALIDATE_ARCHS})")
    validate.add_argument("--threads", type=int, default=None, help="torch threads (default: the table's)")
    validate.add_argument("--clock", choices=tuple(CLOCKS), default=None, help="CPU timer (default: the table's)")
    _add_measurement_args(validate, DEFAULT_VALIDATE_REPEATS, VALIDATE_SEED)
    validate.add_argument("--out_dir", default=None,
                          help="where validate.csv and validate.png go (default: runs/validate-<table name>)")
    validate.set_defaults(handler=run_validate)

    calibrate = commands.add_parser("calibrate", help="fit scale and offset from validate measurements")
    calibrate.add_argument("--lut", required=True, help="latency table (.json) to calibrate")
    calibrate.add_argument("--measurements", required=True, nargs="+",
                           help="one or more validate.csv files written by `validate`")
    calibrate.add_argument("--out", default=None, help="table to write (default: overwrite --lut)")
    calibrate.set_defaults(handler=run_calibrate)

    predict = commands.add_parser("predict", help="predict the cost of one architecture")
    predict.add_argument("--lut", default=DEFAULT_LUT,
                         help="a .json table, the MLP (.pth.tar or mlp:PATH), flops or params "
                              "(default: the Jetson AGX Xavier table)")
    predict.add_argument("--arch_config", required=True,
                         help="a registered name (e.g. LightNet-24ms), \"['MBK3E1', ...]\" or an arch.json")
    predict.add_argument("--verbose", action="store_true", help="print the per-layer breakdown")
    predict.set_defaults(handler=run_predict)
    return parser


def _add_measurement_args(parser, repeats, seed):
    parser.add_argument("--warmup_s", type=float, default=DEFAULT_WARMUP_S,
                        help=f"time-based warm-up in seconds (default: {DEFAULT_WARMUP_S})")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed rounds; each times every module once (default: {repeats})")
    parser.add_argument("--seed", type=int, default=seed, help=f"inputs, order and architectures (default: {seed})")


def _command_line(args):
    """The command that made a table, for its metadata."""
    options = [f"--{name} {value}" for name, value in vars(args).items()
               if name not in ("command", "handler", "out") and value is not None]
    return " ".join(["python3 latency_predictor.py", args.command] + options)


def main(args):
    args.handler(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser())

"""Making cost tables: measuring a device's table (by fitting per-op costs
to whole networks timed end to end, or by timing every op on its own),
deriving the Jetson table from the authors' latency MLP, validating a table
against networks it never saw, and calibrating it; and the command line of
`latency_predictor.py` (build, validate, calibrate, predict, from-mlp),
which runs this module's `main`.

Tables, keys, predictors and `load_predictor` live in `latency_predictor.py`;
how modules are timed (the protocol) in `latency_timing.py`; everything
here writes or checks what those modules read and time.
"""


import argparse
import csv
import datetime
import math
import os
import time

import numpy as np
import torch

import model_train
import operations
from latency_predictor import (DEFAULT_LUT, FIT_HOLDOUT_ARCHS, FIT_SEED, FIT_TRAIN_ARCHS, MIN_NETWORK_COST,
                               MLPPredictor, TablePredictor, additive_totals, arch_indices, arch_to_text, base_metadata,
                               check_calibration_scale, check_table, check_table_path, describe_range, format_cost,
                               entries_from_values, fit_additive, fixed_probes, layer_keys, layer_probes,
                               load_predictor, load_table, new_table, rounded_value, sample_architectures,
                               table_predictor, text_to_arch, write_table)
from latency_timing import (CLOCKS, CONDITIONS, DEFAULT_CLOCK, DEFAULT_CPU_THREADS, DEFAULT_RUNTIME,
                            DEFAULT_WARMUP_S, REFERENCE_NETWORK, RUNTIMES, SPREAD_NAMES, at_reference_level,
                            deployment_line, describe_device, describe_protocol, describe_runtime, load_average,
                            make_protocol, measure, measure_arch_configs, noise_report, reference_level,
                            TIMING_NUMBER_RULES, session_statistics, time_in_fresh_processes, time_networks)
from operations import LAYOUT, NUM_LAYERS, NUM_OPS, NUM_SEARCHABLE_LAYERS
from utils import (UserError, check_number_rules, file_identity, new_figure, open_for_reading, output_folder,
                   refuse_files_given_twice, resolve_device, run_cli, save_figure, write_csv)

# Authors' measurement set-up (their README and release).
JETSON_BATCH_SIZE = 8
JETSON_PROTOCOL = "per network: 5 warm-up runs, 6 timed runs, mean of the fastest two thirds (authors)"

# Build methods and their measurement defaults.
METHODS = ("fit", "isolated")
DEFAULT_METHOD = "fit"
DEFAULT_REPEATS = {"isolated": 1000, "fit": 10}  # rounds: 2-3 minutes each on a 2-core CPU at 1 thread
DEFAULT_FIT_NETWORKS = 300  # random networks a fitted table is solved from (plus the seven of fit_architectures)
MIN_FIT_NETWORKS = NUM_SEARCHABLE_LAYERS * (NUM_OPS - 1) + 1  # unknowns of the fit
DEFAULT_VALIDATE_ARCHS = 30
VALIDATION_CSV = "validate.csv"  # what `validate` writes into --out_dir and `calibrate --measurements` reads
DEFAULT_VALIDATE_REPEATS = 60  # rounds over the networks being validated
NOISY_JITTER_PCT = 20.0  # reference jitter above which build warns
MEASURE_SEED = 0
VALIDATE_SEED = 1  # not the fit/build seed, so validation sees fresh architectures

ERROR_THRESHOLDS_PCT = (5, 10)  # "share within 5% / 10%" in validation summaries
SUMMARY_DECIMALS = 4  # error summaries stored in table metadata
MIN_CALIBRATION_ARCHS = 5  # a scale and an offset from fewer points would fit noise
MAX_MEASURED_MS = 1e6  # 17 minutes for one network: a larger "latency" is a unit or typing error
MIN_MEASURED_MS = MIN_NETWORK_COST  # one microsecond: no network runs faster on any device; less is a typo


def error_summary(predicted, measured):
    """Relative errors of predictions against measurements (in percent; the
    bias is the mean signed error, negative when the prediction is low), and R^2."""
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    signed = (predicted - measured) / measured * 100
    errors = np.abs(signed)
    residual = ((predicted - measured) ** 2).sum()
    spread = ((measured - measured.mean()) ** 2).sum()
    summary = {"count": int(len(measured)), "mean_abs_pct": errors.mean(), "bias_pct": signed.mean(),
               "p95_abs_pct": np.percentile(errors, 95), "max_abs_pct": errors.max(),
               "r2": 1 - residual / spread if spread > 0 else float("nan")}
    for threshold in ERROR_THRESHOLDS_PCT:
        summary[f"within_{threshold}_pct"] = (errors <= threshold).mean() * 100
    summary["kendall_tau"] = kendall_tau(predicted, measured)
    return {name: value if name == "count" else round(float(value), SUMMARY_DECIMALS)
            for name, value in summary.items()}


def kendall_tau(first, second):
    """Kendall's tau-a: (concordant - discordant pairs) / all pairs; how well
    one list ranks the items as the other does (1: the same order)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if len(first) < 2:
        return float("nan")
    upper = np.triu_indices(len(first), k=1)
    signs = np.sign(first[:, None] - first[None, :]) * np.sign(second[:, None] - second[None, :])
    return float(signs[upper].mean())


def format_summary(summary):
    within = "  ".join(f"within {threshold}%: {summary[f'within_{threshold}_pct']:5.1f}%"
                       for threshold in ERROR_THRESHOLDS_PCT)
    bias = f"bias {summary['bias_pct']:+6.2f}%  " if "bias_pct" in summary else ""  # older tables lack it
    return (f"mean |err| {summary['mean_abs_pct']:6.2f}%  {bias}max |err| {summary['max_abs_pct']:6.2f}%  "
            f"{within}  Kendall tau {summary.get('kendall_tau', float('nan')):.3f}  R^2 {summary['r2']:.4f}  "
            f"(n={summary['count']})")


def derive_table_from_mlp(mlp, num_train, num_holdout, seed):
    """The additive table that reproduces the authors' MLP, with its fit
    statistics on held-out architectures and on the six LightNets."""
    architectures = sample_architectures(num_train + num_holdout, seed)
    train, holdout = architectures[:num_train], architectures[num_train:]
    constant, layer_costs, _ = fit_additive(train, mlp.costs(train))
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


def build_latency_table(protocol, num_classes, method, num_networks=DEFAULT_FIT_NETWORKS, max_jitter_pct=None):
    """Measure a table with `protocol` by `method`: "isolated" times every
    op at its input shape; "fit" times whole networks and solves for the
    per-(layer, op) costs. Refuses (before anything is written) a session
    whose reference jitter exceeded `max_jitter_pct`."""
    load_before = load_average()
    started = time.perf_counter()
    if method == "isolated":
        fixed, entries, sessions, source = _isolated_costs(protocol, num_classes)
    else:
        fixed, entries, sessions, source = _fitted_costs(protocol, num_classes, num_networks)
    seconds = time.perf_counter() - started
    noise = noise_report(sessions)
    check_noise(noise, max_jitter_pct)
    metadata = base_metadata("latency", protocol.batch_size, num_classes, protocol.threads)
    metadata.update(
        device=describe_device(protocol.device), runtime=describe_runtime(protocol.runtime),
        protocol=describe_protocol(protocol), source=source, noise=noise, build_seconds=round(seconds, 1),
        load_average_1min={"before": load_before, "after": load_average()},
    )
    return new_table(metadata, fixed, entries)


def check_noise(noise, max_jitter_pct):
    """Refuse a session noisier than the user allows; warn above NOISY_JITTER_PCT."""
    jitter = noise.get("reference_jitter_pct")
    if jitter is None:
        return
    figure = (f"the reference network's time per round varied by {jitter:.1f}% (p90 - p10 over median) and "
              f"drifted by {noise['reference_drift_pct']:.1f}%")
    if max_jitter_pct is not None and jitter > max_jitter_pct:
        raise UserError(f"the machine was too noisy: {figure}, above --max_jitter_pct {max_jitter_pct:g}; "
                        "stop other programs (or raise the limit) and build again; no table written")
    if jitter > NOISY_JITTER_PCT:
        print(f"warning: a noisy machine: {figure}; entries will be less certain than usual")


def _isolated_costs(protocol, num_classes):
    """Every op timed on its own at its input shape (shared shapes once)."""
    probes = fixed_probes(num_classes) + layer_probes()
    timings = measure(probes, protocol, desc="build (isolated ops)", num_classes=num_classes)
    statistics = session_statistics([timings])
    entries, components = entries_from_values(probes, statistics, num_classes)
    spreads = [(entry["p90"] - entry["p10"]) / entry["value"] * 100 for entry in statistics]
    source = {"kind": "measured", "method": "isolated",
              "description": "each op timed on its own at its input shape; layers with the same op and shape "
                             "share one measurement; the fixed part is the sum of its four components",
              "entry_spread_pct": {"median": round(float(np.median(spreads)), 2),
                                   "p90": round(float(np.percentile(spreads, 90)), 2)}}
    fixed = {"value": rounded_value(sum(entry["value"] for entry in components.values())), "components": components}
    return fixed, entries, [timings], source


def fit_architectures(num_networks, seed):
    """The networks a fitted table is solved from: the six LightNets, the
    network with SkipConnect in every searchable layer, and `num_networks`
    random ones (op index rows).

    The all-SkipConnect network is the fit's constant measured directly (it
    is the stem, layer 0, head and projecting SkipConnects alone). Without
    it the constant is an extrapolation far from the random networks (each
    holds about three SkipConnects in 21 layers): at the smallest fit, 133
    networks, its standard error is 5.1 times one network's timing noise,
    with it 1.0 times (0.85 without and 0.65 with it at the default size).
    """
    lightnets = [arch_indices(model_train.LIGHTNETS[name]) for name in model_train.README_LATENCY_MS]
    all_skip = np.full(NUM_SEARCHABLE_LAYERS, operations.SEARCHABLE_OPS.index(operations.SKIP))
    return np.concatenate([np.array(lightnets), all_skip[None], sample_architectures(num_networks, seed)])


def _fitted_costs(protocol, num_classes, num_networks):
    """Whole networks timed, then measured = constant + sum of per-(layer, op)
    costs solved by least squares (negative costs held at 0)."""
    if num_networks < MIN_FIT_NETWORKS:
        raise UserError(f"--num_networks must be at least {MIN_FIT_NETWORKS} to determine the "
                        f"{NUM_SEARCHABLE_LAYERS} x {NUM_OPS - 1} free costs and the constant")
    indices = fit_architectures(num_networks, protocol.seed)
    sessions = time_networks([operations.indices_to_arch(row) for row in indices], protocol, num_classes)
    measured = np.array([entry["value"] for entry in session_statistics(sessions)])
    constant, layer_costs, standard_errors = fit_additive(indices, measured, non_negative=True)
    if constant < 0:  # the stem and head cannot cost less than nothing: the timings cannot pin the costs down
        raise UserError(f"the fit put the fixed part at {constant:.2f} ms, below 0: {len(indices)} timed networks "
                        f"were too few or too noisy for its {MIN_FIT_NETWORKS} unknowns; nothing was written. "
                        "Build again with more --num_networks or --repeats, on a quieter machine")
    fitted = additive_totals(constant, layer_costs, indices)
    entries = {key: {"value": rounded_value(layer_costs[row, column]),
                     "stderr": rounded_value(standard_errors[row, column])}
               for row, keys in enumerate(layer_keys()) for column, key in enumerate(keys)}
    source = {"kind": "measured", "method": "fit",
              "description": f"{len(indices)} whole networks (the six LightNets, the all-SkipConnect network and "
                             f"{num_networks} random ones) "
                             "timed end to end; costs from least squares of measured = constant + one cost per "
                             "(layer, op), costs that came out negative held at 0 and the rest refitted; "
                             "'stderr' per entry is the fit's standard error",
              "networks": int(len(indices)), "anchor": skip_anchor_note(),
              "fit_vs_measured": error_summary(fitted, measured),
              "fixed_part": "'fixed' is the fit's constant: stem, layer 0, head, classifier and the projecting "
                            "SkipConnects"}
    return {"value": rounded_value(constant)}, entries, sessions, source


def measure_networks(indices, protocol, num_classes):
    """measure_arch_configs for searchable-op index rows."""
    return measure_arch_configs([operations.indices_to_arch(row) for row in indices], protocol, num_classes)


# ------------------------------------------------------------ subcommands


def run_from_mlp(args):
    check_table_path(args.out, replace=args.force)
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
    repeats = args.repeats or DEFAULT_REPEATS[args.method]
    protocol = make_protocol(args.device, args.batch_size, args.threads, args.clock, args.warmup_s, repeats,
                             args.seed, args.runtime, reference=not args.no_reference)
    if args.num_classes < 1:
        raise UserError("--num_classes must be at least 1")
    if args.max_jitter_pct is not None and not args.max_jitter_pct > 0:
        raise UserError("--max_jitter_pct must be a positive percentage")
    check_table_path(args.out, replace=args.force)
    print(f"building a table by --method {args.method}: {describe_device(protocol.device)['name']}, {protocol.runtime}, "
          f"batch {protocol.batch_size}, {protocol.threads} thread(s), {protocol.clock} clock, {repeats} rounds "
          f"(1-min load average {load_average()})", flush=True)
    table = build_latency_table(protocol, args.num_classes, args.method, args.num_networks, args.max_jitter_pct)
    table["metadata"]["source"]["command"] = _command_line(args)
    write_table(table, args.out)
    metadata = table["metadata"]
    low, high = TablePredictor(table, os.path.basename(args.out)).feasible_range()
    print(f"built in {metadata['build_seconds']:.0f} s; fixed part {table['fixed']['value']:.3f} ms; "
          f"range {describe_range(low, high, 'ms')}")
    if metadata["noise"]["reference"]:
        print(f"noise: reference {metadata['noise']['reference']} {metadata['noise']['reference_median_ms']:.2f} ms, "
              f"jitter {metadata['noise']['reference_jitter_pct']:.1f}%, "
              f"drift {metadata['noise']['reference_drift_pct']:.1f}%")
    if args.method == "fit":
        print(f"fit on {metadata['source']['networks']} networks: "
              + format_summary(metadata["source"]["fit_vs_measured"]))
    condition = table_condition(metadata)
    if condition:
        print(f"condition: the table predicts a network run alone in a process started as\n"
              f"  {condition} python3 your_script.py")
    print(f"wrote {args.out}")


def run_validate(args):
    predictor = table_predictor(args.lut)
    metadata = predictor.metadata
    if predictor.metric != "latency":
        raise UserError(f"--lut {args.lut}: validate measures latency; this table predicts {predictor.metric}")
    if args.fresh_process and metadata["device"].get("type") != "cpu":
        raise UserError(f"--fresh_process times networks on this machine's CPU as a deployed script runs them; "
                        f"--lut {args.lut} was measured on {metadata['device'].get('name')}: leave it out")
    if metadata["device"].get("type") != resolve_device(args.device).type:
        raise UserError(f"--lut {args.lut} was measured on {metadata['device'].get('name')} "
                        f"({metadata['device'].get('type')}); validate it there, not on {args.device}")
    if args.num_archs < MIN_CALIBRATION_ARCHS:
        raise UserError(f"--num_archs must be at least {MIN_CALIBRATION_ARCHS}: fewer held-out networks say "
                        "nothing about a table (and cannot calibrate it)")
    protocol = validation_protocol(metadata, args.device, args.threads, args.clock, args.warmup_s, args.repeats,
                                   args.seed, reference=not args.no_reference)
    print(f"measuring {args.num_archs} random architectures end to end on {describe_device(protocol.device)['name']}: "
          f"{protocol.runtime}, batch {protocol.batch_size}, {protocol.threads} thread(s), {protocol.clock} clock, "
          f"{protocol.repeats} rounds (1-min load average {load_average()})", flush=True)
    out_dir = args.out_dir or os.path.join("runs", "validate-" + os.path.splitext(os.path.basename(args.lut))[0])
    with output_folder(out_dir, "--out_dir"):  # made now, not after every network was timed
        check_earlier_validation(out_dir, predictor)
        measure_and_report(predictor, metadata, protocol, out_dir, args)


def measure_and_report(predictor, metadata, protocol, out_dir, args):
    """Time --num_archs random networks end to end, compare them with the
    table and write validate.csv and validate.png into `out_dir`."""
    indices = sample_architectures(args.num_archs, args.seed)
    level = table_reference_level(metadata) if protocol.reference else None
    sessions = time_networks([operations.indices_to_arch(row) for row in indices], protocol, metadata["num_classes"])
    if level is not None:
        now = reference_level(sessions)
        print(f"reference {metadata['noise']['reference']}: {now:.2f} ms now, {level:.2f} ms when the table was "
              f"built ({(now / level - 1) * 100:+.1f}%); measurements are scaled to the table's level, so this "
              "drift does not count as table error")
    measured = session_statistics(sessions, level)
    fresh = (fresh_process_validation(predictor, indices, protocol, args.fresh_process)
             if args.fresh_process else {})
    report_validation(predictor, indices, measured, out_dir, fresh)


def check_earlier_validation(out_dir, predictor):
    """A validate.csv already in --out_dir is replaced only if this table
    wrote it (its predicted_raw_ms are this table's predictions): another
    table's measurements took minutes and are not lost to a reused folder."""
    path = os.path.join(out_dir, VALIDATION_CSV)
    if not os.path.lexists(path):
        return
    try:
        rows = read_csv_rows(path, "--out_dir")
        indices = np.array([text_to_arch(row["arch"]) for row in rows], dtype=np.int64)
        written = np.array([float(row["predicted_raw_ms"]) for row in rows])
        same_table = len(rows) > 0 and np.allclose(written, [rounded_value(value) for value in
                                                              predictor.raw_costs(indices)], rtol=1e-6, atol=1e-6)
    except (KeyError, ValueError, TypeError, AttributeError, UserError):
        same_table = False
    if not same_table:
        raise UserError(f"--out_dir {out_dir} holds a {VALIDATION_CSV} that this table did not write (another "
                        f"table's measurements, or another file); choose another --out_dir or move that file")


def fresh_process_validation(predictor, indices, protocol, condition):
    """Each network timed again, alone in a fresh process under `condition`
    (as a user's script runs it); prints the table's error against those
    times as measured and with the machine's drift taken out (the
    reference network timed in alternating calls in the same process,
    scaled to the table's reference level). Returns CSV columns."""
    metadata = predictor.metadata
    level = table_reference_level(metadata)
    line = deployment_line(protocol.threads) if condition == "deployment" else "no setting"
    print(f"timing each network alone in a fresh process ({condition}: {line})", flush=True)
    results = time_in_fresh_processes([operations.indices_to_arch(row) for row in indices], protocol,
                                      metadata["num_classes"], condition, with_reference=level is not None)
    as_measured = np.array([result["value"] for result in results])
    raw = predictor.raw_costs(indices)
    print(f"table {predictor.identifier} vs each network alone in a fresh process ({condition}); page faults per "
          f"call: median {np.median([result['page_faults_per_call'] for result in results]):.0f}")
    print("  as measured:          " + format_summary(error_summary(raw, as_measured)))
    columns = {f"fresh_{condition}_ms": as_measured,
               f"fresh_{condition}_page_faults_per_call": [result["page_faults_per_call"] for result in results]}
    if level is not None:
        scaled = at_reference_level(results, level)
        print(f"  at the table's level: {format_summary(error_summary(raw, scaled))}")
        columns[f"fresh_{condition}_at_table_level_ms"] = scaled
    return columns


def table_reference_level(metadata):
    """The reference network's median (ms) while the table was built, or
    None for tables measured without one."""
    noise = metadata.get("noise")
    if isinstance(noise, dict) and noise.get("reference") == REFERENCE_NETWORK:
        return noise.get("reference_median_ms")
    return None


def table_condition(metadata):
    """The line a user puts before their command for a CPU table to hold,
    or None: GPU tables, and CPU tables measured without the allocator
    setting. Tables from before the condition was recorded name it only as
    their 'allocator'."""
    protocol = metadata.get("protocol", {})
    if metadata["device"].get("type") != "cpu":
        return None
    if "condition" in protocol:
        return protocol["condition"]["line"]
    if "in effect" in str(protocol.get("allocator", "")):
        return deployment_line(metadata.get("threads") or DEFAULT_CPU_THREADS)
    return None


def table_runtime(metadata):
    """The runtime a table was measured with (tables from before runtimes
    were recorded were all PyTorch eager)."""
    return metadata["protocol"].get("runtime", DEFAULT_RUNTIME)


def validation_protocol(metadata, device_name, threads, clock, warmup_s, repeats, seed, reference=True):
    """The table's batch size, threads, clock and runtime unless overridden."""
    threads = threads or metadata["threads"] or DEFAULT_CPU_THREADS
    clock = clock or metadata["protocol"].get("clock", DEFAULT_CLOCK)
    runtime = table_runtime(metadata)
    # Checked here, not left to make_protocol, which would blame options the user did not give.
    for name, value, known in (("clock", clock, CLOCKS), ("runtime", runtime, RUNTIMES)):
        if value not in known:
            raise UserError(f"the table records {name} {value!r}, which this project does not time with "
                            f"({', '.join(known)}); was it made elsewhere?")
    return make_protocol(device_name, metadata["batch_size"], threads, clock, warmup_s, repeats, seed, runtime,
                         reference)


def report_validation(predictor, indices, measured, out_dir, extra_columns=None):
    """Print predicted vs measured, write validate.csv (with `extra_columns`,
    name -> one value per network) and validate.png."""
    extra_columns = extra_columns or {}
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
    csv_path = os.path.join(out_dir, VALIDATION_CSV)
    extra = [[rounded_value(value) for value in values] for values in extra_columns.values()]
    write_csv(csv_path, ["arch", "measured_ms"] + [f"measured_{name}_ms" for name in SPREAD_NAMES]
              + ["predicted_raw_ms", "predicted_ms"] + list(extra_columns),
              [[arch_to_text(row), entry["value"]] + [entry[name] for name in SPREAD_NAMES]
               + [rounded_value(raw_ms), rounded_value(calibrated_ms)] + [values[number] for values in extra]
               for number, (row, entry, raw_ms, calibrated_ms) in enumerate(zip(indices, measured, raw, calibrated))])
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


def is_number_text(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_rows(path, option):
    """The rows of a CSV as dicts; a file that is no CSV text is a UserError."""
    # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark that would hide the first column
    with open_for_reading(path, option, newline="", encoding="utf-8-sig") as file:
        try:
            reader = csv.DictReader(file)
            numbers = [name for name in reader.fieldnames or [] if is_number_text(name)]
            if numbers:  # a file saved without its header line: its first row would name the columns
                raise UserError(f"{option} {path}: its first line holds {numbers[0]}, a number, where the header "
                                "should name the columns; put back the header line (arch,measured_ms,... as "
                                "validate writes it)")
            repeated = sorted({name for name in reader.fieldnames or [] if reader.fieldnames.count(name) > 1})
            if repeated:  # DictReader would keep the last column of the name, silently
                raise UserError(f"{option} {path}: its header names the column {repeated[0]} twice; keep one")
            return list(reader)
        except UnicodeDecodeError:
            raise UserError(f"{option} {path} is not UTF-8 text; save it as a UTF-8 CSV") from None
        except csv.Error as error:
            raise UserError(f"{option} {path} is not a CSV file ({error})") from None


def read_measurements(path):
    """(op indices, measured ms) from a validate.csv (a spreadsheet's
    byte-order mark is fine); a measurement that cannot be a latency (zero,
    negative, not finite) or an architecture measured twice in one file is
    refused, naming its rows."""
    rows = read_csv_rows(path, "--measurements")
    if rows and not {"arch", "measured_ms"} <= set(rows[0]):
        raise UserError(f"--measurements {path}: expected the {VALIDATION_CSV} written by `validate` "
                        f"(columns arch, measured_ms)")
    indices, measured = [], []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        try:
            indices.append(text_to_arch(row["arch"]))
            if "_" in row["measured_ms"]:  # float() reads "2_3.4" as 23.4: a typo, not a number
                raise ValueError(row["measured_ms"])
            measured.append(float(row["measured_ms"]))
        except (ValueError, TypeError, AttributeError, UserError) as error:
            reason = str(error) if isinstance(error, UserError) else "a field is missing or not a number"
            raise UserError(f"--measurements {path}: row {number} ({reason}) is no measurement of "
                            "an architecture; fix or remove it") from None
    indices, measured = np.array(indices, dtype=np.int64).reshape(-1, NUM_SEARCHABLE_LAYERS), np.array(measured)
    for row, value in enumerate(measured, start=2):  # row 1 is the header
        if not (math.isfinite(value) and MIN_MEASURED_MS <= value <= MAX_MEASURED_MS):
            raise UserError(f"--measurements {path}: row {row} measured {value:.6g} ms, which is no latency "
                            f"(measurements must be between {MIN_MEASURED_MS:g} and {MAX_MEASURED_MS:g} ms); "
                            "remove or re-measure it")
    first_row = {}
    for row, arch in enumerate(map(tuple, indices), start=2):
        if arch in first_row:
            raise UserError(f"--measurements {path}: rows {first_row[arch]} and {row} measure the same "
                            "architecture; keep one (pool repeated runs as separate files)")
        first_row[arch] = row
    return indices, measured


# A measurement this many times off the others' ratio to the table (a
# typo, a run disturbed by other work) would pull the whole fit with it;
# on a real device that ratio varies by tens of percent between networks.
OUTLIER_RATIO = 5.0


def refuse_outlying_measurement(indices, raw, measured):
    """Name the measurement furthest from the typical measured-to-predicted
    ratio when it is OUTLIER_RATIO or more times off, instead of letting it
    skew the fit (whose scale would then blame the units)."""
    ratios = measured / raw
    typical = float(np.median(ratios))
    off = np.maximum(ratios / typical, typical / ratios)
    worst = int(np.argmax(off))
    if off[worst] >= OUTLIER_RATIO:
        raise UserError(f"calibration: architecture {arch_to_text(indices[worst])} measured {measured[worst]:.4g} ms "
                        f"where the table predicts {raw[worst]:.4g} ms, {off[worst]:.0f} times off the ratio of the "
                        "other measurements; remove or re-measure that row (nothing was written)")


def calibrate_table(table, indices, measured, sources):
    """Fit measured = scale * raw prediction + offset and store it in the
    table's metadata; returns the before/after summaries."""
    if len(measured) < MIN_CALIBRATION_ARCHS:
        raise UserError(f"calibration needs at least {MIN_CALIBRATION_ARCHS} measured architectures, "
                        f"got {len(measured)}")
    metadata = table["metadata"]
    raw = TablePredictor(table, "raw").raw_costs(indices)
    if np.ptp(measured) <= 1e-9 * measured.max():
        raise UserError(f"calibration: all {len(measured)} architectures measured {measured[0]:g} ms; latencies that "
                        "do not vary cannot fit a scale (was the same network timed each time?); nothing was written")
    refuse_outlying_measurement(indices, raw, measured)
    scale, offset = np.polyfit(raw, measured, 1)
    if not scale > 0:
        raise UserError(f"calibration: measured latency does not grow with the prediction (scale {scale:.3f}); "
                        "the measurements do not fit this table")
    check_calibration_scale(scale, "calibration")
    before, after = error_summary(raw, measured), error_summary(scale * raw + offset, measured)
    if after["mean_abs_pct"] > before["mean_abs_pct"]:
        raise UserError(f"calibration would make the table worse (mean error {before['mean_abs_pct']:.2f}% -> "
                        f"{after['mean_abs_pct']:.2f}%): the measurements are too noisy or too few for a fit; "
                        "nothing was written. Measure again (validate) on a quieter machine")
    lowest = scale * TablePredictor(table, "raw").feasible_range()[0] + offset
    if not lowest > 0:
        raise UserError(f"calibration would predict {lowest:.2f} {metadata['unit']} for the fastest architecture "
                        f"(scale {scale:.3f}, offset {offset:.3f}): no latency is that; the measurements do not "
                        "fit this table, nothing was written")
    metadata["calibration"] = {
        "model": "calibrated = scale * table total + offset", "scale": round(float(scale), 6),
        "offset": rounded_value(offset), "fitted_on": list(sources), "num_measurements": int(len(measured)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "before": before, "after": after}
    # The checks every table meets on loading (an offset that leaves every network at one cost, sweep 15 #258),
    # before the table is written.
    check_table(table, "calibration (nothing was written)")
    return before, after


def check_calibration_files(measurements, out):
    """Each measurements file once (one given twice would count its rows
    twice), and the table never written over one of them."""
    refuse_files_given_twice(measurements, "--measurements")
    if file_identity(out) in {file_identity(path) for path in measurements}:
        raise UserError(f"--out {out} is one of the --measurements files; write the table to another path")


def run_calibrate(args):
    check_calibration_files(args.measurements, args.out or args.lut)
    if args.out is not None and os.path.realpath(args.out) != os.path.realpath(args.lut):
        check_table_path(args.out, replace=args.force)
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
    print(f"{predictor.identifier}: {format_cost(total, decimals=3)} {predictor.unit} ({predictor.metric})")


# -------------------------------------------------------------------- CLI


def get_args_parser():
    parser = argparse.ArgumentParser(description="Build, check and query LightNAS cost tables.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from_mlp = commands.add_parser("from-mlp", help="derive the Jetson table from the authors' latency MLP")
    from_mlp.add_argument("--mlp", required=True, help="the authors' .pth.tar predictor")
    from_mlp.add_argument("--out", required=True, help="table to write (.json)")
    from_mlp.add_argument("--force", action="store_true", help="replace --out if it exists")
    from_mlp.add_argument("--num_train", type=int, default=FIT_TRAIN_ARCHS,
                          help=f"random architectures to fit on (default: {FIT_TRAIN_ARCHS})")
    from_mlp.add_argument("--num_holdout", type=int, default=FIT_HOLDOUT_ARCHS,
                          help=f"random architectures to test the fit on (default: {FIT_HOLDOUT_ARCHS})")
    from_mlp.add_argument("--seed", type=int, default=FIT_SEED,
                          help=f"architecture sampling seed (default: {FIT_SEED})")
    from_mlp.set_defaults(handler=run_from_mlp)

    build = commands.add_parser("build", help="measure a latency table on this machine")
    build.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                       help="fit: time whole networks and solve for each (layer, op) cost; isolated: time every "
                            f"op on its own (default: {DEFAULT_METHOD})")
    build.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    build.add_argument("--runtime", default=DEFAULT_RUNTIME,
                       help=f"one of {', '.join(RUNTIMES)}: PyTorch eager, or ONNX Runtime's CPU execution provider "
                            f"(default: {DEFAULT_RUNTIME})")
    build.add_argument("--batch_size", type=int, default=1, help="images per forward (default: 1)")
    build.add_argument("--threads", type=int, default=DEFAULT_CPU_THREADS,
                       help=f"intra-op threads (default: {DEFAULT_CPU_THREADS})")
    build.add_argument("--clock", choices=tuple(CLOCKS), default=DEFAULT_CLOCK,
                       help="CPU timer: wall (perf_counter) or thread (CPU time of the computing thread, "
                            f"immune to preemption on a shared machine; needs --threads 1) (default: {DEFAULT_CLOCK})")
    _add_measurement_args(build, None, MEASURE_SEED)
    build.add_argument("--num_networks", type=int, default=DEFAULT_FIT_NETWORKS,
                       help=f"--method fit: random networks to time, besides the six LightNets and the all-SkipConnect one "
                            f"(default: {DEFAULT_FIT_NETWORKS}, at least {MIN_FIT_NETWORKS})")
    build.add_argument("--max_jitter_pct", type=float, default=None,
                       help="refuse to write the table when the reference network's time per round varied by "
                            f"more than this (p90 - p10 over median, %%); without it, build warns above "
                            f"{NOISY_JITTER_PCT:g}%%")
    build.add_argument("--num_classes", type=int, default=model_train.IMAGENET_CLASSES,
                       help="classifier outputs of the deployed network (default: 1000)")
    build.add_argument("--out", required=True, help="table to write (.json)")
    build.add_argument("--force", action="store_true", help="replace --out if it exists")
    build.set_defaults(handler=run_build)

    validate = commands.add_parser("validate", help="compare a table with end-to-end measurements")
    validate.add_argument("--lut", required=True, help="latency table (.json)")
    validate.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    validate.add_argument("--num_archs", type=int, default=DEFAULT_VALIDATE_ARCHS,
                          help=f"random architectures to measure (default: {DEFAULT_VALIDATE_ARCHS})")
    validate.add_argument("--threads", type=int, default=None, help="torch threads (default: the table's)")
    validate.add_argument("--clock", choices=tuple(CLOCKS), default=None, help="CPU timer (default: the table's)")
    validate.add_argument("--fresh_process", choices=CONDITIONS, default=None,
                          help="also time each network alone in a fresh process, as a user's script runs it: "
                               "'deployment' under the table's condition (the line `build` prints), 'plain' "
                               "without it; about 6 s per network")
    _add_measurement_args(validate, DEFAULT_VALIDATE_REPEATS, VALIDATE_SEED)
    validate.add_argument("--out_dir", default=None,
                          help="where validate.csv and validate.png go (default: runs/validate-<table name>)")
    validate.set_defaults(handler=run_validate)

    calibrate = commands.add_parser("calibrate", help="fit scale and offset from validate measurements")
    calibrate.add_argument("--lut", required=True, help="latency table (.json) to calibrate")
    calibrate.add_argument("--measurements", required=True, nargs="+",
                           help="one or more validate.csv files written by `validate`")
    calibrate.add_argument("--out", default=None, help="table to write (default: overwrite --lut)")
    calibrate.add_argument("--force", action="store_true", help="replace --out if it exists (another file than --lut)")
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
    default = (f"{repeats}" if repeats else
               ", ".join(f"{count} with --method {method}" for method, count in DEFAULT_REPEATS.items()))
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed rounds; each times every module once (default: {default})")
    parser.add_argument("--no_reference", action="store_true",
                        help="do not time the reference network in every round nor divide by it (drift then "
                             "enters the figures)")
    parser.add_argument("--seed", type=int, default=seed, help=f"inputs, order and architectures (default: {seed})")


def _command_line(args):
    """The command that made a table, for its metadata."""
    options = []
    for name, value in vars(args).items():
        if name in ("command", "handler", "out", "force") or value is None or value is False:
            continue
        options.append(f"--{name}" if value is True else f"--{name} {value}")
    return " ".join(["python3 latency_build.py", args.command] + options)


def main(args):
    check_number_rules(args, TIMING_NUMBER_RULES)
    args.handler(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser())

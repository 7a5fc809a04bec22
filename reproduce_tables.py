"""Rebuild the paper's tables and measure its central claim, in one command.

    python3 reproduce_tables.py                 # full (docs/results.md gives its time on 2 cores)
    python3 reproduce_tables.py --quick         # CI-sized: a few minutes
    python3 reproduce_tables.py --dataset /data/imagenet --weights_dir /data/lightnets    # + top-1/top-5
    python3 reproduce_tables.py --search_dataset /data/imagenet100 --jobs 1 -- --gpus 1 --visible 0

Table 1, "LightNets": the twelve released networks: params and FLOPs (thop),
latency from the Jetson AGX Xavier table next to the authors' measurement,
latency measured end to end on this machine next to the CPU table's
prediction, and the published top-1/top-5; with --dataset and --weights_dir,
also the accuracy we evaluate from the released weights. Beside it, the six
LightNets timed on this machine with torchvision's MobileNetV2/V3, MnasNet,
EfficientNet-B0 and ShuffleNetV2 (peers.py; PyTorch eager and ONNX Runtime),
against their published top-1.

Table 2, "you only search once": for T = 20, 22, ..., 30 ms on the Jetson
table, one LightNAS search per target, all branching from one shared warm-up,
against the baseline of earlier methods (FBNet, ProxylessNAS): a fixed
penalty, alpha's loss CE + w * LAT / T, swept over a grid of w. It counts the
searches each needs before one lands within --tolerance of the target.
Every network either method finds is then retrained from scratch with the
short CPU recipe (retraining.py; --retrain_epochs) so that its accuracy
stands beside its latency.

The baseline's loss depends on w and T only through c = w / T (it is
CE + c * LAT), and nothing else in its search depends on T. So one search per
grid value c serves every target: at target T it is the search with weight
w = c * T. The grid is run once, at --reference_target, and read for all six.

By default the searches run the demo schedule on the synthetic dataset (CPU);
--search_dataset runs the paper's schedule on your data (ImageNet-100 for the
real thing; options after `--` go to every search_imagenet.py call).

Everything goes into --out: report.md (the tables, machine, versions, table
metadata), lightnets.csv, peers.csv, searches.csv, baseline_grid.csv,
metadata.json, the figures (search_curves.png, baseline_grid.png,
latency_accuracy.png, peers.png), and
every search's own folder. A run that stops can be started again with the
same command: finished searches are kept, interrupted ones resume.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import re
import sys
import time

import torch

import constraint
import data
import evaluate
import latency_build
import latency_predictor as lp
import latency_timing
import model_train
import operations
import peers
import retraining
import search_imagenet
from utils import (UserError, check_regular_file, check_run_plan, continued_by_rerun, drop_options, first_repeated,
                   new_figure, parse_forwarded_arguments, read_json_lines, read_sealed_json, run_cli, save_figure,
                   tool_folder, write_csv, write_json, write_sealed_json)

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
SEARCH_SCRIPT = os.path.join(REPO_ROOT, "search_imagenet.py")
TARGETS = (20.0, 22.0, 24.0, 26.0, 28.0, 30.0)
MEASURE_SEED = 3  # the end-to-end timing's input and order (the benchmarks use 2)


@dataclasses.dataclass(frozen=True)
class Mode:
    """How big a run is: the synthetic data, the search schedule, the
    baseline grid and the number of timing rounds."""

    name: str
    dataset: dict       # data.synthetic_dataset parameters
    schedule: dict      # search_imagenet schedule options
    grid: tuple         # baseline c = w / T values (per ms), ascending
    timing_rounds: int  # end-to-end rounds per LightNet
    retrain_epochs: int  # short from-scratch retraining of each found network
    retrain_dataset: dict  # data.synthetic_dataset parameters of that retraining


# The search demo's data and schedule (search_imagenet.DEMO_*), for the full run.
FULL = Mode("full", dict(search_imagenet.DEMO_DATASET), dict(search_imagenet.DEMO_SCHEDULE),
            grid=(2.5e-5, 5e-5, 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3), timing_rounds=30,
            retrain_epochs=retraining.SHORT_RECIPE["epochs"], retrain_dataset=dict(retraining.RETRAIN_DATASET))
# A CI-sized run: a smaller set at 16 px and 8 epochs (1 warm-up). Fewer
# alpha steps need larger alpha and lambda steps, as in the demo.
QUICK = Mode("quick", dict(train_per_class=16, val_per_class=16, image_size=32),
             dict(search_imagenet.DEMO_SCHEDULE, epochs=8, freeze_epochs=1, batch_size_train=32,
                  batch_size_val=8, image_size=16, tradeoff_learning_rate=5e-2, arch_learning_rate=2e-2,
                  latch_epochs=3, arch_lr_step=2, tau_decay=0.5),
             grid=(5e-5, 2e-4, 8e-4), timing_rounds=5, retrain_epochs=1,
             retrain_dataset=dict(train_per_class=16, val_per_class=16, image_size=32))


# ------------------------------------------------------------------ machine


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine():
    cpu = latency_timing.describe_device(torch.device("cpu"))
    gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return {
        "cpu": cpu["name"], "logical_cpus": cpu["logical_cpus"], "gpus": gpus or ["none"],
        "os": platform.platform(), "python": platform.python_version(),
        "packages": {name: package_version(name) for name in ("torch", "torchvision", "numpy", "thop", "matplotlib")},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def describe_table(predictor):
    metadata = getattr(predictor, "metadata", {})
    device = metadata.get("device", {})
    return {"identifier": predictor.identifier, "device": device.get("name"), "date": metadata.get("date"),
            "batch_size": metadata.get("batch_size"), "threads": metadata.get("threads"),
            "source": metadata.get("source", {}).get("kind"), "calibrated": "calibration" in metadata}


# ---------------------------------------------------------- table 1: LightNets


def is_searchable(arch_config):
    """The latency tables hold the 7 searchable ops; SE twins are outside."""
    return all(name in operations.SEARCHABLE_OPS for name in arch_config[1:])


def normalized(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_weights(weights_dir, network):
    """The released file for `network` in `weights_dir`: LightNet-20ms.pth.tar,
    lightnet_20ms.pth, ... (case, dashes and underscores ignored)."""
    wanted = normalized(network)
    for entry in sorted(os.listdir(weights_dir)):
        stem = re.sub(r"\.(pth\.tar|pth|pt|tar)$", "", entry)
        if stem != entry and normalized(stem) == wanted:
            return os.path.join(weights_dir, entry)
    return None


def evaluate_released(args, names):
    """Our top-1/top-5 (percent) of each network whose weights are present."""
    if not (args.dataset and args.weights_dir):
        return {}
    results, missing = {}, []
    for name in names:
        path = find_weights(args.weights_dir, name)
        if path is None:
            missing.append(name)
            continue
        total, top1, top5 = evaluate.evaluate_weights(path, args.dataset, name, args.device, args.eval_batch_size,
                                                      args.workers)
        results[name] = (100.0 * top1 / total, 100.0 * top5 / total, total)
        print(f"  {name}: {evaluate.format_result(total, top1, top5)}", flush=True)
    if missing:
        print(f"  no weights in {args.weights_dir} for {', '.join(missing)}: not evaluated")
    return results


def lightnet_rows(jetson, cpu_table, timing_rounds, evaluated):
    """One dict per registered LightNet with every column of table 1, and
    the reference network's ms now and when the CPU table was built (None
    for a table timed without one)."""
    names = list(model_train.LIGHTNETS)
    arch_configs = [model_train.LIGHTNETS[name] for name in names]
    protocol = latency_build.validation_protocol(cpu_table.metadata, "cpu", None, None,
                                                 latency_timing.DEFAULT_WARMUP_S, timing_rounds, MEASURE_SEED)
    print(f"timing {len(names)} networks end to end: batch {protocol.batch_size}, {protocol.threads} thread(s), "
          f"{protocol.clock} clock, {timing_rounds} rounds", flush=True)
    sessions = latency_timing.time_networks(arch_configs, protocol, cpu_table.metadata["num_classes"])
    measured = latency_timing.session_statistics(sessions)
    reference = {"now_ms": round(latency_timing.reference_level(sessions), 3),
                 "built_ms": latency_build.table_reference_level(cpu_table.metadata)}
    rows = []
    for name, arch_config, timing in zip(names, arch_configs, measured):
        params, flops = model_train.count_params_and_flops(model_train.LightNet(arch_config))
        searchable = is_searchable(arch_config)
        readme_top1, readme_top5 = model_train.README_ACCURACY.get(name, (None, None))
        exact_top1, exact_top5 = model_train.EXACT_ACCURACY[name]
        ours_top1, ours_top5, ours_images = evaluated.get(name, (None, None, None))
        rows.append({
            "model": name, "params_m": params / 1e6, "flops_m": flops / 1e6,
            "jetson_table_ms": jetson.cost(arch_config) if searchable else None,
            "readme_ms": model_train.README_LATENCY_MS.get(name),
            "cpu_measured_ms": timing["value"],
            "cpu_table_ms": cpu_table.cost(arch_config) if searchable else None,
            "readme_top1": readme_top1, "readme_top5": readme_top5,
            "exact_top1": exact_top1, "exact_top5": exact_top5,
            "our_top1": ours_top1, "our_top5": ours_top5, "our_images": ours_images,
        })
    return rows, reference


# ------------------------------------------------------------ the searches


@dataclasses.dataclass
class SearchJob:
    """One search_imagenet.py run and where it writes."""

    name: str
    folder: str
    arguments: list
    result_file: str  # present once the run is complete

    def done(self):
        return os.path.isfile(os.path.join(self.folder, self.result_file))

    def check_kept(self):
        """A finished search kept from an earlier run must have been made
        with this job's options (a warm-up checkpoint is checked by the
        searches that resume from it)."""
        if self.result_file == search_imagenet.ARCH_NAME:
            search_imagenet.read_finished_search(self.folder, arguments=self.arguments)


def schedule_arguments(schedule):
    return [item for name, value in schedule.items() if value is not None for item in (f"--{name}", str(value))]


def plan_searches(args, mode, dataset):
    """The warm-up job, one LightNAS job per target and one baseline job per
    grid value; all share `common` search arguments."""
    common = ["--dataset", dataset]
    if not args.search_dataset:
        classes = data.synthetic_class_count(**mode.dataset)
        common += schedule_arguments(dict(mode.schedule, num_classes=classes)) + ["--workers", "0"]
    # Table 2 counts the searches that land by themselves: no landing step.
    common += ["--land_within", "0"]
    common += args.search_arguments  # last: the user's options win
    settings = parse_forwarded_arguments(search_imagenet.get_args_parser(), common, "the search options after --")
    search_imagenet.resolve_schedule(settings)
    searches = os.path.join(args.out, "searches")
    warmup = SearchJob("warm-up", os.path.join(searches, "warmup"),
                       common + ["--target_latency", str(args.targets[0]),
                                 "--stop_after_epoch", str(settings.freeze_epochs)],
                       search_imagenet.WARMUP_CHECKPOINT_NAME)
    start = ["--resume", os.path.join(warmup.folder, search_imagenet.WARMUP_CHECKPOINT_NAME)]
    lightnas = [SearchJob(f"LightNAS {target:g} ms", os.path.join(searches, f"lightnas-{target:g}ms"),
                          common + ["--target_latency", str(target)] + start, "arch.json")
                for target in args.targets]
    # The baseline has no lambda and no latch: their settings stay out of it.
    fixed_common = drop_options(search_imagenet.get_args_parser(), common, search_imagenet.LAGRANGE_ONLY_SETTINGS)
    baseline = [SearchJob(f"fixed penalty c={c:g}", os.path.join(searches, f"fixed-c{c:g}"),
                          fixed_common + ["--target_latency", str(args.reference_target), "--penalty", "fixed",
                                    "--penalty_weight", repr(c * args.reference_target)] + start, "arch.json")
                for c in args.grid]
    return warmup, lightnas, baseline, settings, common


def run_jobs(jobs, report, log_folder, parallel, threads):
    """Run every search job not done yet as a child process, `parallel` at
    a time, each limited to `threads` CPU threads (several single-threaded
    searches use a small CPU far better than one search on all cores);
    `report(job, seconds)` after each, seconds None for one kept from an
    earlier run. Every kept job is checked to have been made with its
    options before any job starts; readers of the results rely on that. A
    failure stops the others and raises its UserError."""
    os.makedirs(log_folder, exist_ok=True)
    for job in jobs:
        if job.done():
            job.check_kept()
            report(job, None)

    def run(job):
        arguments = list(job.arguments)
        if os.path.isfile(os.path.join(job.folder, search_imagenet.CHECKPOINT_NAME)):
            arguments = _without_resume(arguments) + ["--resume", job.folder]  # interrupted: continue it
        started = time.time()
        retraining.run_logged([sys.executable, SEARCH_SCRIPT, "--save", job.folder] + arguments,
                              os.path.join(log_folder, os.path.basename(job.folder) + ".txt"), threads)
        if not job.done():
            raise UserError(f"search '{job.name}' ended without its arch.json (log in {log_folder})")
        return time.time() - started

    retraining.run_in_parallel(run, [job for job in jobs if not job.done()], parallel, on_done=report)


def _without_resume(arguments):
    index = arguments.index("--resume") if "--resume" in arguments else None
    return arguments if index is None else arguments[:index] + arguments[index + 2:]


def search_result(job):
    """A job's finished search (run_jobs has checked that a kept one was
    made with the job's options) with its search seconds and metrics."""
    result, metrics = search_imagenet.read_finished_search(job.folder)
    result["seconds"] = sum(row["seconds"] for row in metrics
                            if row["epoch"] > result["search"]["freeze_epochs"])
    result["metrics"] = metrics
    return result


def lightnas_rows(results, targets, tolerance, mlp, retrained):
    """One row per target; `mlp` (the authors' latency model, or None)
    cross-checks the table's prediction; `retrained`: each network's
    retrained top-1 (None when not retrained)."""
    rows = []
    for result, target, top1 in zip(results, targets, retrained):
        rows.append({"target_ms": target, "predicted_ms": result["predicted"],
                     "mlp_ms": mlp.cost(result["arch_config"]) if mlp else None,
                     "error_percent": result["error_percent"], "searches": 1,
                     "within_tolerance": abs(result["error_percent"]) <= tolerance,
                     "retrained_top1": top1,
                     "search_seconds": result["seconds"], "arch_config": " ".join(result["arch_config"])})
    return rows


def baseline_rows(results, grid, retrained):
    rows = []
    for result, c, top1 in zip(results, grid, retrained):
        rows.append({"c_per_ms": c, "predicted_ms": result["predicted"], "retrained_top1": top1,
                     "search_seconds": result["seconds"], "arch_config": " ".join(result["arch_config"])})
    return rows


def retrain_found_networks(args, dataset, jobs, results):
    """Each found network's top-1 after the short from-scratch retraining
    (`retraining.SHORT_RECIPE`, seed 0), identical networks trained once;
    a list of None when --retrain_epochs is 0."""
    if args.retrain_epochs == 0:
        return [None] * len(results)
    folders = {}
    for job, result in zip(jobs, results):
        folders.setdefault(tuple(result["arch_config"]),
                           os.path.join(args.out, "retrain", os.path.basename(job.folder)))
    print(f"== retraining the {len(folders)} distinct found networks from scratch ({args.retrain_epochs} epochs, "
          f"{args.jobs} at a time) ==", flush=True)

    def retrain(item):
        arch_config, folder = item
        top1 = retraining.retrain(list(arch_config), folder, dataset, seed=0, epochs=args.retrain_epochs)
        print(f"  {os.path.basename(folder)}: val top-1 {top1:.1f}%", flush=True)
        return top1

    top1 = dict(zip(folders, retraining.run_in_parallel(retrain, list(folders.items()), args.jobs)))
    return [top1[tuple(result["arch_config"])] for result in results]


def design_cost(lightnas, baseline, tolerance):
    """Per target: LightNAS's one search against the grid sweep, which runs
    in increasing w until a search lands within tolerance."""
    rows = []
    for row in lightnas:
        target = row["target_ms"]
        errors = [100.0 * (grid_row["predicted_ms"] / target - 1.0) for grid_row in baseline]
        hit = next((index for index, error in enumerate(errors) if abs(error) <= tolerance), None)
        closest = min(range(len(errors)), key=lambda index: abs(errors[index]))
        rows.append({"target_ms": target, "lightnas_ms": row["predicted_ms"], "lightnas_mlp_ms": row["mlp_ms"],
                     "lightnas_searches": 1, "lightnas_error_percent": row["error_percent"],
                     "lightnas_within": row["within_tolerance"],
                     "lightnas_retrained_top1": row["retrained_top1"],
                     "baseline_searches": hit + 1 if hit is not None else None,
                     "baseline_grid_size": len(baseline),
                     "baseline_closest_ms": baseline[closest]["predicted_ms"],
                     "baseline_closest_error_percent": errors[closest],
                     "baseline_closest_w": baseline[closest]["c_per_ms"] * target,
                     "baseline_closest_retrained_top1": baseline[closest]["retrained_top1"]})
    return rows


# ------------------------------------------------------------------ figures


def colours(name, count):
    """`count` colours spread over the matplotlib colour map `name`."""
    import matplotlib

    return matplotlib.colormaps[name]([index / max(1, count - 1) for index in range(count)])


def step_curve(metrics, warmup_metrics):
    """(epoch positions, argmax latency) over a search, one point per alpha
    step after the warm-up and one per warm-up epoch."""
    return constraint.step_series(list(warmup_metrics) + list(metrics), "argmax_cost")


def plot_search_curves(path, lightnas_results, baseline_results, targets, grid, warmup_metrics):
    figure, (left, right) = new_figure((12, 4.5), 1, 2, sharey=True)
    colors = colours("viridis", len(targets))
    for result, target, color in zip(lightnas_results, targets, colors):
        metrics = [row for row in result["metrics"] if row["epoch"] > len(warmup_metrics)]
        left.plot(*step_curve(metrics, warmup_metrics), color=color, linewidth=1, label=f"T = {target:g} ms")
        left.axhline(target, color=color, linestyle="--", linewidth=0.8)
    left.set(title="LightNAS: one search per target (learned lambda)", xlabel="epoch",
             ylabel="predicted latency of the argmax network (ms, Jetson table)")
    left.legend(fontsize=8)
    colors = colours("plasma", len(grid))
    for result, c, color in zip(baseline_results, grid, colors):
        metrics = [row for row in result["metrics"] if row["epoch"] > len(warmup_metrics)]
        right.plot(*step_curve(metrics, warmup_metrics), color=color, linewidth=1, label=f"w/T = {c:g} /ms")
    for target in targets:
        right.axhline(target, color="grey", linestyle="--", linewidth=0.6)
    right.set(title="fixed penalty CE + w LAT/T: one search per w", xlabel="epoch")
    right.legend(fontsize=8)
    save_figure(figure, path)


def plot_baseline_grid(path, baseline, lightnas, tolerance):
    figure, axis = new_figure((6.5, 4.5))
    axis.plot([row["c_per_ms"] for row in baseline], [row["predicted_ms"] for row in baseline], marker="o",
              color="tab:red", label="fixed penalty: final latency")
    for row in lightnas:
        target = row["target_ms"]
        axis.axhspan(target * (1 - tolerance / 100), target * (1 + tolerance / 100), color="tab:green", alpha=0.3)
        axis.axhline(row["predicted_ms"], color="tab:green", linewidth=0.8)
    axis.set_xscale("log")
    axis.set(xlabel="penalty per ms, c = w / T (log)", ylabel="predicted latency (ms, Jetson table)",
             title=f"fixed-penalty grid vs the targets (green bands: +/-{tolerance:g}%)")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def plot_found_networks(path, lightnas, baseline, retrain_epochs):
    """Retrained top-1 against predicted latency: what each method's
    searches found, with the targets marked."""
    figure, axis = new_figure((6.5, 4.5))
    axis.plot([row["predicted_ms"] for row in lightnas], [row["retrained_top1"] for row in lightnas], marker="*",
              markersize=11, linestyle="none", color="tab:green", label="LightNAS, one search per target")
    axis.plot([row["predicted_ms"] for row in baseline], [row["retrained_top1"] for row in baseline], marker="o",
              linestyle="none", color="tab:red", label="fixed penalty, one search per w")
    for row in lightnas:
        axis.axvline(row["target_ms"], color="grey", linestyle=":", linewidth=0.7)
    axis.set(xlabel="predicted latency (ms, Jetson table); dotted: targets",
             ylabel=f"val top-1 after {retrain_epochs} epochs from scratch (%)",
             title="found networks, retrained with the short CPU recipe")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def plot_latency_accuracy(path, rows, cpu_name):
    figure, (left, right) = new_figure((12, 4.5), 1, 2)
    published = [row for row in rows if row["readme_ms"] is not None]
    left.plot([row["readme_ms"] for row in published], [row["readme_top1"] for row in published], marker="o",
              label="authors: README latency and top-1")
    evaluated = [row for row in published if row["our_top1"] is not None]
    if evaluated:
        left.plot([row["readme_ms"] for row in evaluated], [row["our_top1"] for row in evaluated], marker="x",
                  linestyle="none", color="black", label="top-1 evaluated here")
    for row in published:
        left.annotate(row["model"].replace("LightNet-", ""), (row["readme_ms"], row["readme_top1"]), fontsize=7)
    left.set(xlabel="latency on Jetson AGX Xavier, batch 8 (ms)", ylabel="ImageNet top-1 (%)",
             title="LightNets: latency-accuracy (published)")
    left.legend(fontsize=8)
    for suffix, marker, label in (("", "o", "LightNets"), ("-SE", "^", "with SE")):
        chosen = [row for row in rows if row["model"].endswith("ms" + suffix)]
        right.plot([row["cpu_measured_ms"] for row in chosen], [row["exact_top1"] for row in chosen],
                   marker=marker, linestyle="none", label=label)
        for row in chosen:
            right.annotate(row["model"].replace("LightNet-", ""), (row["cpu_measured_ms"], row["exact_top1"]),
                           fontsize=7)
    right.set(xlabel=f"latency measured here, batch 1 (ms)\n{cpu_name}", ylabel="ImageNet top-1, authors' exact (%)",
              title="on this machine")
    right.legend(fontsize=8)
    save_figure(figure, path)


# ------------------------------------------------------------------ report


def authors_mlp(path):
    """The authors' latency MLP that cross-checks the searched networks, or
    None when the default file is absent (said once, and the column says
    so); a --mlp given by the user must exist."""
    if os.path.isfile(path):
        predictor = lp.load_predictor(path)
        if not isinstance(predictor, lp.MLPPredictor):  # a table would cross-check the searches against itself
            raise UserError(f"--mlp {path} is not the authors' latency MLP (it reads as {predictor.identifier}); "
                            "give their lightnas_jetson_latency_mlp.pth.tar")
        return predictor
    if os.path.abspath(path) != os.path.abspath(lp.AUTHORS_MLP) or os.path.lexists(path):
        check_regular_file(path, "--mlp")  # names what is there instead (a folder, a socket, a broken link)
        raise UserError(f"--mlp {path} not found; give the authors' lightnas_jetson_latency_mlp.pth.tar")
    print(f"note: the authors' MLP is not at {path}: the column \"authors' MLP (ms)\" says {NO_MLP}", flush=True)
    return None


NO_MLP = "n/a (no MLP file)"


def number(value, digits=2, signed=False):
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def lightnets_table(rows):
    header = ["model", "params (M)", "FLOPs (M)", "Jetson table (ms)", "README (ms)", "diff (ms)",
              "CPU measured (ms)", "CPU table (ms)", "diff (%)", "README top-1/5", "authors' exact top-1/5",
              "ours top-1/5"]
    body = []
    for row in rows:
        jetson_diff = (row["jetson_table_ms"] - row["readme_ms"]
                       if row["jetson_table_ms"] is not None and row["readme_ms"] is not None else None)
        cpu_diff = (100.0 * (row["cpu_table_ms"] / row["cpu_measured_ms"] - 1.0)
                    if row["cpu_table_ms"] is not None else None)
        readme = (f"{row['readme_top1']:.1f} / {row['readme_top5']:.1f}" if row["readme_top1"] is not None else "-")
        ours = (f"{row['our_top1']:.3f} / {row['our_top5']:.3f}" if row["our_top1"] is not None else "-")
        body.append([row["model"], number(row["params_m"]), number(row["flops_m"], 1), number(row["jetson_table_ms"]),
                     number(row["readme_ms"], 1), number(jetson_diff, 2, signed=True), number(row["cpu_measured_ms"]),
                     number(row["cpu_table_ms"]), number(cpu_diff, 1, signed=True), readme,
                     f"{row['exact_top1']:.3f} / {row['exact_top5']:.3f}", ours])
    return markdown_table(header, body)


def searches_table(cost_rows, tolerance):
    header = ["target (ms)", "LightNAS latency (ms)", "error (%)", "authors' MLP (ms)", "retrained top-1 (%)",
              "LightNAS searches", f"fixed penalty: searches to land within {tolerance:g}%", "closest (ms)",
              "its error (%)", "its w", "its retrained top-1 (%)"]
    body = []
    for row in cost_rows:
        target = row["target_ms"]
        needed = (str(row["baseline_searches"]) if row["baseline_searches"] is not None
                  else f"not reached in {row['baseline_grid_size']}")
        body.append([f"{target:g}", number(row["lightnas_ms"]), number(row["lightnas_error_percent"], 2, signed=True),
                     NO_MLP if row["lightnas_mlp_ms"] is None else number(row["lightnas_mlp_ms"]),
                     number(row["lightnas_retrained_top1"], 1),
                     "1" + ("" if row["lightnas_within"] else f" (outside {tolerance:g}%)"), needed,
                     number(row["baseline_closest_ms"]), number(row["baseline_closest_error_percent"], 2, signed=True),
                     f"{row['baseline_closest_w']:.3g}", number(row["baseline_closest_retrained_top1"], 1)])
    return markdown_table(header, body)


def grid_table(baseline, targets):
    header = ["c = w/T (per ms)", f"w at {targets[0]:g} ms", f"w at {targets[-1]:g} ms", "final latency (ms)",
              "retrained top-1 (%)", "search (s)"]
    body = [[f"{row['c_per_ms']:g}", f"{row['c_per_ms'] * targets[0]:.3g}", f"{row['c_per_ms'] * targets[-1]:.3g}",
             number(row["predicted_ms"]), number(row["retrained_top1"], 1), f"{row['search_seconds']:.0f}"]
            for row in baseline]
    return markdown_table(header, body)


def summary_lines(cost_rows, baseline, lightnas, tolerance):
    lightnas_hits = sum(row["lightnas_within"] for row in cost_rows)
    baseline_hits = sum(row["baseline_searches"] is not None for row in cost_rows)
    lightnas_errors = [abs(row["error_percent"]) for row in lightnas]
    latencies = [row["predicted_ms"] for row in baseline]
    return [
        f"- LightNAS: {lightnas_hits} of {len(cost_rows)} targets within {tolerance:g}% with one search each "
        f"({len(cost_rows)} searches; mean |error| {sum(lightnas_errors) / len(lightnas_errors):.2f}%, "
        f"max {max(lightnas_errors):.2f}%).",
        f"- Fixed penalty: {baseline_hits} of {len(cost_rows)} targets within {tolerance:g}% after the whole "
        f"grid ({len(baseline)} searches, shared by all targets through c = w/T); its final latencies span "
        f"{min(latencies):.2f}-{max(latencies):.2f} ms.",
    ] + ([f"- Targets above {max(latencies):.2f} ms lie above every search of the grid: a fixed penalty only "
          "pushes latency down, so a weaker one would be needed, found by more searches."]
         if any(row["target_ms"] * (1 - tolerance / 100) > max(latencies) for row in cost_rows) else [])


def retrained_lines(lightnas, baseline, retrain_epochs):
    """What the retrained accuracies say, or why there are none."""
    if not retrain_epochs:
        return ["- Found networks not retrained (--retrain_epochs 0); retrain one with train_imagenet.py."]

    def span(rows):
        values = [row["retrained_top1"] for row in rows]
        return f"{min(values):.1f}-{max(values):.1f}% (mean {sum(values) / len(values):.1f}%)"
    epochs = f"{retrain_epochs} epoch{'s' if retrain_epochs != 1 else ''}"
    return [f"- Retrained from scratch ({epochs} of the short CPU recipe, seed 0, val top-1): "
            f"LightNAS networks {span(lightnas)}, fixed-penalty networks {span(baseline)}. One seed each: "
            "benchmarks/search_quality.py measures this recipe's seed-to-seed spread (several points), so "
            "differences of a few points between single networks are noise."]


def kept_note(kept):
    return f"; {kept} searches kept from an earlier run with the same settings" if kept else ""


def our_accuracy_note(rows):
    images = sorted({row["our_images"] for row in rows if row["our_images"] is not None})
    if not images:
        return "ours: not evaluated in this run (needs --dataset and --weights_dir)."
    return f"ours: evaluated here on {' / '.join(f'{count:,}' for count in images)} val images."


def peers_table(results):
    runtimes = [runtime for runtime in latency_timing.RUNTIMES if f"{runtime}_ms" in results[0]]
    header = "| network | ImageNet top-1 (%) | params (M) | " + " | ".join(
        f"{runtime} (ms)" for runtime in runtimes) + " |"
    rows = [f"| {result['network']} | {result['top1']:.2f} | {result['params_m']:.2f} | "
            + " | ".join(f"{result[runtime + '_ms']:.2f}" for runtime in runtimes) + " |" for result in results]
    return "\n".join([header, "|" + "---|" * (3 + len(runtimes))] + rows)


def write_report(out, context):
    sections = [
        "# LightNAS: reproduced tables",
        "",
        f"Produced by `{context['command']}` on {context['date']} ({context['mode']} mode, "
        f"{context['seconds'] / 60:.1f} min{kept_note(context['kept_searches'])}).",
        "",
        "Machine: " + ", ".join([
            f"{context['machine']['cpu']} ({context['machine']['logical_cpus']} logical CPUs)",
            f"GPU: {', '.join(context['machine']['gpus'])}", context["machine"]["os"],
            f"Python {context['machine']['python']}"]
            + [f"{name} {version}" for name, version in context["machine"]["packages"].items()]) + ".",
        "",
        f"Latency tables: Jetson `{context['jetson']['identifier']}` ({context['jetson']['device']}, batch "
        f"{context['jetson']['batch_size']}, {context['jetson']['source']}); CPU `{context['cpu']['identifier']}` "
        f"(built on {context['cpu']['device']}, batch {context['cpu']['batch_size']}, {context['cpu']['threads']} "
        f"thread(s), {context['cpu']['date']}{', calibrated' if context['cpu']['calibrated'] else ''}).",
        "",
        "## Table 1: the LightNets",
        "",
        lightnets_table(context["lightnets"]),
        "",
        "Params and FLOPs (multiply-accumulates) at 224x224 by thop. Jetson table: our per-op table for the "
        "authors' Jetson AGX Xavier latency model; README: the authors' measurement. CPU measured: this machine, "
        "end to end, median of the rounds; CPU table: the table's prediction"
        + (" (calibrated)" if context["cpu"]["calibrated"] else "") + ". The tables hold the "
        "seven searchable ops, so SE twins have no prediction. Accuracy: the authors' on ImageNet val (50,000 "
        "images); " + our_accuracy_note(context["lightnets"]),
    ]
    reference = context["cpu_reference"]
    if reference["built_ms"] and not context["cpu_mismatch"]:
        change = 100.0 * (reference["now_ms"] / reference["built_ms"] - 1.0)
        sections += ["", f"The timing protocol's reference network ran at {reference['now_ms']:.2f} ms here now and "
                     f"{reference['built_ms']:.2f} ms when the CPU table was built ({change:+.1f}%): that much of "
                     "the CPU diff is the machine's speed today, not the table."]
    if context["cpu_mismatch"]:
        sections += ["", f"Note: the CPU table was built on {context['cpu']['device']}, this machine is "
                     f"{context['machine']['cpu']}: its predictions are for that machine. Build one for this "
                     "machine with `python3 latency_build.py build` and pass it as --cpu_table."]
    sections += [
        "",
        "## The LightNets beside the networks users would pick instead",
        "",
        peers_table(context["peers"]),
        "",
        f"Timed on this machine ({context['machine']['cpu']}), batch 1, one thread, with the latency tables' "
        "protocol (interleaved rounds, each divided by a reference network's time in the same round, median). "
        f"Top-1: the LightNets' from the LightNAS paper (Table 1), the others' from the metadata of torchvision's "
        f"{peers.PEER_WEIGHTS} weights (not downloaded; architectures only). Figure: `peers.png`.",
    ]
    sections += [
        "",
        "## Table 2: you only search once",
        "",
        f"Search: {context['search_description']}. One shared warm-up ({context['warmup_seconds']:.0f} s), then "
        f"every search starts from it. Tolerance: {context['tolerance']:g}% of the target.",
        "",
        searches_table(context["design_cost"], context["tolerance"]),
        "",
        *summary_lines(context["design_cost"], context["baseline"], context["lightnas"], context["tolerance"]),
        *retrained_lines(context["lightnas"], context["baseline"], context["retrain_epochs"]),
        "",
        "The fixed-penalty grid (alpha's loss CE + w * LAT/T = CE + c * LAT; searched once per c at "
        f"{context['reference_target']:g} ms, which at target T is the search with w = c * T; swept in "
        "increasing w):",
        "",
        grid_table(context["baseline"], context["targets"]),
        "",
        "Figures: `search_curves.png` (predicted latency per alpha step, every search), `baseline_grid.png` "
        "(the grid's final latencies against the target bands), `found_networks.png` (the found networks' "
        "retrained top-1 against their latency), `latency_accuracy.png` (the LightNets).",
    ]
    if context["synthetic"]:
        sections += ["", "On the synthetic demo data the supernet learns, but alpha's cross-entropy gradient is "
                     "weak and noisy next to the latency term's steady one, and Adam scales every alpha entry's "
                     "step to about its lr whatever the gradient's size: even the weakest fixed penalty sets "
                     "alpha's direction, so the grid can only push latency down. LightNAS's lambda turns "
                     "negative when the network is too fast and pushes latency up. A concentrated alpha moves "
                     "its argmax in jumps of several ms; the demo schedule's latch (--latch hold, within 1% of T "
                     "in the last 20 epochs) holds it once it passes within 1%, and no landing step runs in this "
                     "table. Run with --search_dataset on ImageNet-100 (GPU) for the real trade-off."]
    with open(os.path.join(out, "report.md"), "w") as file:
        file.write("\n".join(sections) + "\n")


# -------------------------------------------------------------------- main


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reproduce", help="output folder (default: reproduce)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run: tiny data and schedule, small grid")
    parser.add_argument("--dataset", default=None, help="ImageNet (val/ is enough) to evaluate released weights")
    parser.add_argument("--weights_dir", default=None, help="folder with the released LightNet .pth.tar files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"),
                        help="device for evaluating weights (default: cuda when available)")
    parser.add_argument("--eval_batch_size", type=int, default=100, help="evaluation batch (default: 100)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="data-loading processes for evaluation (default: min(8, CPU cores))")
    parser.add_argument("--cpu_table", default=lp.shipped_cpu_table(latency_timing.cpu_model_name()[0]),
                        help="CPU latency table to compare with this machine's timings (default: the shipped one "
                             "measured on this CPU model, else the AMD EPYC one)")
    parser.add_argument("--mlp", default=lp.AUTHORS_MLP,
                        help="the authors' latency MLP, to cross-check the searched networks (default: "
                             f"../shared/data/{os.path.basename(lp.AUTHORS_MLP)})")
    parser.add_argument("--search_dataset", default=None,
                        help="run the searches on this dataset with the paper's schedule (default: synthetic demo)")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="targets in ms")
    parser.add_argument("--grid", type=float, nargs="+", default=None,
                        help="baseline penalties c = w/T in 1/ms, ascending (default: 8 values, 3 with --quick)")
    parser.add_argument("--reference_target", type=float, default=25.0,
                        help="the target the baseline grid runs at (its result does not depend on it)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="landed = |error| <= this percent (default 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="searches run at once (default: CPU cores / --threads; 1 with --search_dataset)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per search (default: 1)")
    parser.add_argument("--retrain_epochs", type=int, default=None,
                        help="retrain every found network from scratch this many epochs with the short CPU recipe "
                             f"(default: {FULL.retrain_epochs}, {QUICK.retrain_epochs} with --quick, 0 = none, "
                             "and 0 with --search_dataset)")
    parser.add_argument("search_arguments", nargs="*", help="after --: passed to every search_imagenet.py call")
    return parser


# What only the evaluation of released weights reads.
EVALUATION_OPTIONS = ("device", "eval_batch_size", "workers")


def validate(args, mode):
    if args.jobs is None:
        args.jobs = 1 if args.search_dataset else max(1, (os.cpu_count() or 1) // max(1, args.threads))
    if args.retrain_epochs is None:
        args.retrain_epochs = 0 if args.search_dataset else mode.retrain_epochs
    if args.jobs < 1 or args.threads < 1 or not 0 < args.tolerance < 100 or args.retrain_epochs < 0:
        raise UserError("--jobs and --threads must be at least 1, --tolerance a percentage in (0, 100) and "
                        "--retrain_epochs not negative")
    if bool(args.dataset) != bool(args.weights_dir):
        raise UserError("--dataset and --weights_dir go together: evaluating needs both the images and the weights")
    defaults = get_args_parser().parse_args([])
    evaluation_options = [name for name in EVALUATION_OPTIONS if getattr(args, name) != getattr(defaults, name)]
    if evaluation_options and not args.dataset:
        raise UserError(f"--{evaluation_options[0]} applies to evaluating the released weights, which needs "
                        f"--dataset and --weights_dir; add them or drop --{evaluation_options[0]}")
    if args.eval_batch_size < 1 or args.workers < 0:
        raise UserError("--eval_batch_size must be at least 1 and --workers not negative")
    for name in ("dataset", "weights_dir"):
        if getattr(args, name) and not os.path.isdir(getattr(args, name)):
            raise UserError(f"--{name} {getattr(args, name)} is not a folder")
    args.grid = list(args.grid or mode.grid)
    if not all(0 < value < math.inf for value in args.grid):  # NaN too
        raise UserError("--grid values must be positive finite numbers")
    if args.grid != sorted(set(args.grid)):
        raise UserError("--grid values must be ascending and distinct: the sweep runs in increasing w")
    parse_forwarded_arguments(search_imagenet.get_args_parser(), args.search_arguments, "the search options after --",
                              sets_itself=("save", "dataset", "target_latency", "resume", "penalty", "penalty_weight",
                                           "stop_after_epoch"), owner="reproduce_tables.py for each search")
    jetson = lp.load_predictor(None)
    for target in args.targets:
        search_imagenet.check_target(jetson, target, "--targets:")
    search_imagenet.check_target(jetson, args.reference_target, "--reference_target")
    repeated = first_repeated(args.targets, key=lambda target: f"{target:g}")  # each names its search's folder
    if repeated is not None:
        raise UserError(f"--targets names {repeated:g} ms twice; give each target once")
    return jetson


def run_searches(args, warmup, lightnas_jobs, baseline_jobs):
    """The warm-up, then every other search from it; returns how many were
    kept from an earlier run of the same command."""
    print(f"== Table 2: one shared warm-up, {len(lightnas_jobs)} LightNAS searches, {len(baseline_jobs)} "
          f"fixed-penalty searches ({args.jobs} at a time) ==", flush=True)
    log_folder = os.path.join(args.out, "logs")
    total_jobs = 1 + len(lightnas_jobs) + len(baseline_jobs)
    finished, kept = [], []

    def report(job, seconds):
        finished.append(job)
        if seconds is None:
            kept.append(job)
        when = "kept from an earlier run" if seconds is None else f"{seconds:.0f} s"
        outcome = "" if job is warmup else f": {search_result(job)['predicted']:.2f} ms"
        print(f"[{len(finished)}/{total_jobs}] {job.name}{outcome} ({when})", flush=True)

    run_jobs([warmup], report, log_folder, args.jobs, args.threads)
    run_jobs(lightnas_jobs + baseline_jobs, report, log_folder, args.jobs, args.threads)
    return len(kept)


def write_outputs(out, context, lightnas_results, baseline_results, warmup_metrics):
    """CSV files, figures, metadata.json and report.md."""
    lightnets, lightnas, baseline, cost_rows = (context[name] for name in (
        "lightnets", "lightnas", "baseline", "design_cost"))
    write_csv(os.path.join(out, "lightnets.csv"), list(lightnets[0]), [list(row.values()) for row in lightnets])
    write_csv(os.path.join(out, "searches.csv"), list(cost_rows[0]) + ["arch_config"],
              [list(row.values()) + [search["arch_config"]] for row, search in zip(cost_rows, lightnas)])
    write_csv(os.path.join(out, "baseline_grid.csv"), list(baseline[0]), [list(row.values()) for row in baseline])
    plot_search_curves(os.path.join(out, "search_curves.png"), lightnas_results, baseline_results,
                       context["targets"], [row["c_per_ms"] for row in baseline], warmup_metrics)
    plot_baseline_grid(os.path.join(out, "baseline_grid.png"), baseline, lightnas, context["tolerance"])
    if context["retrain_epochs"]:
        plot_found_networks(os.path.join(out, "found_networks.png"), lightnas, baseline, context["retrain_epochs"])
    plot_latency_accuracy(os.path.join(out, "latency_accuracy.png"), lightnets, context["machine"]["cpu"])
    peers.write_results(context["peers"], out, context["machine"]["cpu"])
    write_json(os.path.join(out, "metadata.json"), context)
    write_report(out, context)


def main(args):
    started = time.time()
    retraining.stop_children_on_sigterm()
    continued_by_rerun()
    mode = QUICK if args.quick else FULL
    jetson = validate(args, mode)
    cpu_table = lp.table_predictor(args.cpu_table)
    if cpu_table.metric != "latency" or cpu_table.metadata["device"].get("type") != "cpu":
        raise UserError(f"--cpu_table {args.cpu_table} holds {cpu_table.metric} of "
                        f"{cpu_table.metadata['device'].get('name')}; Table 1 compares it with timings on this CPU: "
                        "give a CPU latency table (latency_build.py build)")
    mlp = authors_mlp(args.mlp)
    if args.search_dataset:  # checked now, not by the first search after Table 1's timings
        data.check_dataset_layout(args.search_dataset, "--search_dataset")
    dataset = args.search_dataset or data.synthetic_dataset(**mode.dataset)
    with tool_folder(args.out, "reproduce_tables.py"):  # left empty by a failure (a full disk, Ctrl-C), it is removed
        warmup, lightnas_jobs, baseline_jobs, settings, common = plan_searches(args, mode, dataset)
        check_run_plan(args.out, {"mode": mode.name, "search_arguments": common, "targets": args.targets,
                                  "grid": args.grid, "reference_target": args.reference_target,
                                  "retrain_epochs": args.retrain_epochs,
                                  # Table 1's kept timings are compared with this table's costs.
                                  "cpu_table_costs": cpu_table.fingerprint}, "reproduce_tables.py")

        lightnets, cpu_reference, peer_results = table_1_and_peers(args, mode, jetson, cpu_table)
        kept = run_searches(args, warmup, lightnas_jobs, baseline_jobs)

        warmup_metrics = read_json_lines(os.path.join(warmup.folder, "metrics.jsonl"))[:settings.freeze_epochs]
        lightnas_results = [search_result(job) for job in lightnas_jobs]
        baseline_results = [search_result(job) for job in baseline_jobs]
        retrain_dataset = data.synthetic_dataset(**mode.retrain_dataset)
        retrained = retrain_found_networks(args, retrain_dataset, lightnas_jobs + baseline_jobs,
                                           lightnas_results + baseline_results)
        lightnas = lightnas_rows(lightnas_results, args.targets, args.tolerance, mlp, retrained[:len(lightnas_jobs)])
        baseline = baseline_rows(baseline_results, args.grid, retrained[len(lightnas_jobs):])
        machine = describe_machine()
        context = {
            "command": "python3 " + " ".join(sys.argv), "date": datetime.date.today().isoformat(), "mode": mode.name,
            "seconds": time.time() - started, "kept_searches": kept, "machine": machine,
            "jetson": describe_table(jetson), "cpu": describe_table(cpu_table),
            "cpu_mismatch": cpu_table.metadata["device"]["name"] != machine["cpu"], "cpu_reference": cpu_reference,
            "lightnets": lightnets, "peers": peer_results, "lightnas": lightnas, "baseline": baseline,
            "design_cost": design_cost(lightnas, baseline, args.tolerance),
            "tolerance": args.tolerance, "targets": args.targets, "reference_target": args.reference_target,
            "retrain_epochs": args.retrain_epochs,
            "warmup_seconds": sum(row["seconds"] for row in warmup_metrics),
            "synthetic": args.search_dataset is None,
            "search_description": describe_search(settings, dataset, args.search_dataset is None),
        }
        write_outputs(args.out, context, lightnas_results, baseline_results, warmup_metrics)
        with open(os.path.join(args.out, "report.md")) as file:
            print("\n" + file.read())
        print(f"wrote {args.out}/ in {(time.time() - started) / 60:.1f} min")


TIMINGS_FILE = "timings.json"


def table_1_and_peers(args, mode, jetson, cpu_table):
    """Table 1's rows, the reference network's speed and the peers' rows:
    measured now, or kept from an earlier run into the same --out (the plan
    is the same, checked before): a run interrupted during its searches
    continues without timing everything again. Delete OUT/timings.json to
    time them again. Evaluating released weights (--dataset) is never kept."""
    path = os.path.join(args.out, TIMINGS_FILE)
    if args.dataset is None and os.path.isfile(path):
        timings = read_sealed_json(path, "delete it to time the networks again")
        print(f"== Table 1 and the peers: kept from an earlier run ({path}) ==", flush=True)
        return timings["lightnets"], timings["cpu_reference"], timings["peers"]
    print("== Table 1: the LightNets ==", flush=True)
    evaluated = evaluate_released(args, list(model_train.LIGHTNETS))
    lightnets, cpu_reference = lightnet_rows(jetson, cpu_table, mode.timing_rounds, evaluated)
    print("== The LightNets beside torchvision's mobile networks ==", flush=True)
    peer_results = peers.compare(mode.timing_rounds)
    peers.print_table(peer_results)
    if args.dataset is None:
        write_sealed_json(path, {"lightnets": lightnets, "cpu_reference": cpu_reference, "peers": peer_results})
    return lightnets, cpu_reference, peer_results


def describe_search(settings, dataset, synthetic):
    what = "the synthetic demo dataset" if synthetic else dataset
    return (f"{settings.epochs} epochs ({settings.freeze_epochs} warm-up) on {what}, {settings.image_size} px, "
            f"batch {settings.batch_size_train}/{settings.batch_size_val}, alpha lr {settings.arch_learning_rate:g}, "
            f"lambda step {settings.tradeoff_learning_rate:g}, seed {settings.seed}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())

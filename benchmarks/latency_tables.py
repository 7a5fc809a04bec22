"""Figures for the latency tables: how well the shipped
tables predict what they stand for.

1. The Jetson AGX Xavier table against the authors' MLP on random
   architectures, and on the six LightNets next to the README's measurements.
2. The CPU table against end-to-end measurement on this machine, before and
   after its calibration, on architectures the calibration never saw.
3. The CPU table's build time (read from its metadata, not rebuilt).

    python3 benchmarks/latency_tables.py            # a few minutes on a 2-core CPU
    python3 benchmarks/latency_tables.py --quick    # a smoke run, seconds
"""

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import latency_build  # noqa: E402  (needs the repo root on sys.path)
import latency_predictor as lp  # noqa: E402
import model_train  # noqa: E402
from utils import UserError, run_cli  # noqa: E402

JETSON_ARCHS = 10000  # issue: Jetson table vs MLP on 10,000 random architectures
CPU_ARCHS = 30  # issue: at least 30 measured architectures
QUICK_JETSON_ARCHS = 1000
QUICK_CPU_ARCHS = 5
QUICK_REPEATS = 5
# Fresh architectures: the Jetson fit used seed 0 (lp.FIT_SEED), the shipped
# CPU calibration seed 1 (latency_build.VALIDATE_SEED).
BENCHMARK_SEED = 2


def jetson_figures(jetson, mlp_path, num_archs):
    print(f"== Jetson AGX Xavier table ({jetson.identifier}) vs the authors' MLP ==")
    if not os.path.isfile(mlp_path):
        print(f"MLP {mlp_path} not found: skipping the comparison with it")
        mlp = None
    else:
        mlp = lp.load_predictor(mlp_path)
        indices = lp.sample_architectures(num_archs, BENCHMARK_SEED)
        summary = latency_build.error_summary(jetson.costs(indices), mlp.costs(indices))
        print(f"{num_archs} random architectures: mean |diff| {summary['mean_abs_pct']:.3f}%, "
              f"p95 {summary['p95_abs_pct']:.3f}%, max {summary['max_abs_pct']:.3f}%")
        low, high = mlp.feasible_range()
        print(f"feasible range: table {jetson.feasible_range()[0]:.2f}-{jetson.feasible_range()[1]:.2f} ms, "
              f"MLP {low:.2f}-{high:.2f} ms")
    print(f"{'network':<15} {'table ms':>9} {'MLP ms':>8} {'README ms':>10}")
    for name, readme_ms in model_train.README_LATENCY_MS.items():
        arch_config = model_train.LIGHTNETS[name]
        mlp_ms = f"{mlp.cost(arch_config):8.2f}" if mlp else f"{'-':>8}"
        print(f"{name:<15} {jetson.cost(arch_config):9.2f} {mlp_ms} {readme_ms:10.1f}")


def cpu_figures(cpu_lut, num_archs, repeats, warmup_s, clock):
    predictor = lp.table_predictor(cpu_lut)
    metadata = predictor.metadata
    print(f"\n== CPU table {predictor.identifier} ==")
    print(f"device: {metadata['device']['name']}, batch {metadata['batch_size']}, {metadata['threads']} thread(s), "
          f"{metadata['protocol']['clock']} clock, torch {metadata['runtime']['torch']}")
    print(f"build: {metadata['build_seconds']:.0f} s for {metadata['protocol']['repeats']} rounds "
          f"(1-min load average {metadata['load_average_1min']['before']} before, "
          f"{metadata['load_average_1min']['after']} after); median entry spread (p90-p10)/median "
          f"{metadata['noise']['median_over_entries']:.1f}%")
    calibration = metadata.get("calibration")
    if calibration is None:
        raise UserError(f"{cpu_lut} has no calibration; run `latency_predictor.py validate` and `calibrate` first")
    print(f"calibration: {calibration['scale']:.4f} x table + {calibration['offset']:.4f} ms, fitted on "
          f"{calibration['num_measurements']} measurements ({', '.join(calibration['fitted_on'])})")
    print(f"  on those:  before {latency_build.format_summary(calibration['before'])}")
    print(f"             after  {latency_build.format_summary(calibration['after'])}")
    protocol = latency_build.validation_protocol(metadata, "cpu", None, clock, warmup_s, repeats, BENCHMARK_SEED)
    print(f"measuring {num_archs} fresh random architectures end to end (seed {BENCHMARK_SEED}, {repeats} rounds, "
          f"{protocol.clock} clock; 1-min load average {os.getloadavg()[0]:.2f})", flush=True)
    indices = lp.sample_architectures(num_archs, BENCHMARK_SEED)
    measured = latency_build.measure_networks(indices, protocol, metadata["num_classes"])
    medians = [entry["value"] for entry in measured]
    for label, predicted in (("  held out:  before", predictor.raw_costs(indices)),
                             ("             after ", predictor.costs(indices))):
        print(f"{label} {latency_build.format_summary(latency_build.error_summary(predicted, medians))}")


def get_args_parser():
    parser = argparse.ArgumentParser(description="Accuracy figures of the shipped latency tables.")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_JETSON_ARCHS} Jetson and {QUICK_CPU_ARCHS} CPU architectures, "
                             f"{QUICK_REPEATS} rounds")
    parser.add_argument("--mlp", default=lp.AUTHORS_MLP, help="the authors' latency MLP (default: ../shared/data)")
    parser.add_argument("--jetson_lut", default=lp.DEFAULT_LUT, help="Jetson table (default: the shipped one)")
    parser.add_argument("--cpu_lut", default=lp.CPU_LUT, help="calibrated CPU table (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=latency_build.DEFAULT_VALIDATE_REPEATS,
                        help=f"rounds per CPU measurement (default: {latency_build.DEFAULT_VALIDATE_REPEATS})")
    parser.add_argument("--clock", choices=tuple(latency_build.CLOCKS), default=None,
                        help="CPU timer for the end-to-end measurement (default: the table's)")
    parser.add_argument("--warmup_s", type=float, default=latency_build.DEFAULT_WARMUP_S,
                        help=f"time-based warm-up in seconds (default: {latency_build.DEFAULT_WARMUP_S})")
    return parser


def main(args):
    quick = args.quick
    jetson_figures(lp.load_predictor(args.jetson_lut), args.mlp, QUICK_JETSON_ARCHS if quick else JETSON_ARCHS)
    cpu_figures(args.cpu_lut, QUICK_CPU_ARCHS if quick else CPU_ARCHS, QUICK_REPEATS if quick else args.repeats,
                args.warmup_s, args.clock)


if __name__ == "__main__":
    run_cli(main, get_args_parser())

"""One search per latency target, all branching from one shared warm-up.

This is "you only search once" measured: for T = 20, 22, ..., 30 ms on the
Jetson table, a single search each (no penalty tuning, no re-runs) and the
final architecture's predicted latency and error, cross-checked with the
authors' latency MLP. By default it runs the demo schedule on the synthetic
dataset; pass --dataset (and schedule options) for a real run.

    python3 benchmarks/target_sweep.py --save sweep
    python3 benchmarks/target_sweep.py --save sweep --targets 20 24 28 -- --epochs 30 --freeze_epochs 4
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import latency_predictor  # noqa: E402
import search_imagenet  # noqa: E402

DEFAULT_TARGETS = (20.0, 22.0, 24.0, 26.0, 28.0, 30.0)
DEFAULT_MLP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "shared", "data", "lightnas_jetson_latency_mlp.pth.tar")


def run_search(arguments):
    parser = search_imagenet.get_args_parser()
    search_imagenet.main(parser.parse_args(arguments))


def sweep(save_root, targets, search_arguments):
    """Run the shared warm-up once, then one search per target from it.
    Returns one row per target: target, predicted cost, error (%), epochs,
    seconds, folder."""
    parser = search_imagenet.get_args_parser()
    settings = parser.parse_args(search_arguments + ["--save", "unused"])
    search_imagenet.resolve_schedule(settings)
    warmup_folder = os.path.join(save_root, "warmup")
    started = time.time()
    run_search(search_arguments + ["--save", warmup_folder, "--target_latency", str(targets[0]),
                                   "--stop_after_epoch", str(settings.freeze_epochs)])
    warmup_seconds = time.time() - started
    warmup_checkpoint = os.path.join(warmup_folder, search_imagenet.WARMUP_CHECKPOINT_NAME)
    rows = []
    for target in targets:
        folder = os.path.join(save_root, f"target-{target:g}")
        started = time.time()
        run_search(search_arguments + ["--save", folder, "--target_latency", str(target),
                                       "--resume", warmup_checkpoint])
        with open(os.path.join(folder, "arch.json")) as file:
            result = json.load(file)
        rows.append({"target": target, "predicted": result["predicted"], "error_percent": result["error_percent"],
                     "arch_config": result["arch_config"], "searches": 1,
                     "search_epochs": settings.epochs - settings.freeze_epochs,
                     "seconds": time.time() - started, "folder": folder})
    return rows, warmup_seconds


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", default="target-sweep", help="folder for the warm-up and the searches")
    parser.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS), help="targets in ms")
    parser.add_argument("--mlp", default=DEFAULT_MLP, help="the authors' latency MLP, for the cross-check")
    parser.add_argument("search_arguments", nargs="*", help="passed to search_imagenet.py (after --)")
    return parser


def main(args):
    rows, warmup_seconds = sweep(args.save, args.targets, args.search_arguments)
    mlp = latency_predictor.load_predictor(args.mlp) if os.path.isfile(args.mlp) else None
    print(f"\nshared warm-up: {warmup_seconds:.0f} s; then one search per target")
    print(f"{'target ms':>9} {'table ms':>9} {'error %':>8} {'MLP ms':>8} {'searches':>8} {'seconds':>8}")
    for row in rows:
        mlp_text = f"{mlp.cost(row['arch_config']):8.2f}" if mlp else f"{'n/a':>8}"
        print(f"{row['target']:9.1f} {row['predicted']:9.2f} {row['error_percent']:+8.2f} {mlp_text} "
              f"{row['searches']:8d} {row['seconds']:8.0f}")
    errors = [abs(row["error_percent"]) for row in rows]
    print(f"mean |error| {sum(errors) / len(errors):.2f}%, max {max(errors):.2f}%, "
          f"within 1%: {sum(error <= 1.0 for error in errors)}/{len(errors)}")
    with open(os.path.join(args.save, "sweep.json"), "w") as file:
        json.dump({"warmup_seconds": warmup_seconds, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

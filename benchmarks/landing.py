"""Does one search land its target by itself, while its supernet learns?

The paper's claim is one search, the target met. This benchmark runs the
demo search (`search_imagenet.py` without --dataset: the synthetic set at
32 px, the demo schedule) with no landing step (`--land_within 0`) for the
targets 20, 21, ..., 30 ms on the Jetson table and two seeds, once per latch
variant:

- demo: the demo's defaults (`--latch hold --latch_tolerance 1%
  --latch_epochs 20`);
- paper-latch: the paper's latch on the same schedule (`--latch scale
  --latch_tolerance 0.15 --latch_epochs 8`, the demo's settings before).

It prints one row per run (landed cost, error, final val top-1 of the
supernet on alpha's images, mean largest op probability, the epoch the latch
engaged) and per variant the share within 1%, the median and worst |error|;
it writes `landing.json` and `landing.png` (landed against target).

Then, on every run's final alpha, it compares the exact projection behind
`--land_within` / `--strict` (constraint.project_to_band) with the greedy
repair those options used before (single-layer changes, the most probable
op first; kept here only as the baseline): share of results in the band,
layers changed and log-probability given up, for +-1%, +-0.25% and at most T.

    python3 benchmarks/landing.py                       # 44 runs, about 60 min on 2 cores
    python3 benchmarks/landing.py --variants demo       # 22 runs
    python3 benchmarks/landing.py --targets 24 28 --seeds 10 --out landing-small

Each seed's warm-up runs once and every search of that seed starts from its
`warmup.pth.tar` (the warm-up does not depend on the target or the latch;
resuming is exact, so a run is the one a user's own command gives). Searches
run --jobs at a time, one thread each; a rerun with the same --out keeps the
finished ones.
"""

import argparse
import os
import statistics
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import constraint  # noqa: E402
import latency_predictor  # noqa: E402
import operations  # noqa: E402
import reproduce_tables  # noqa: E402
import search_imagenet  # noqa: E402
import utils  # noqa: E402
from utils import UserError  # noqa: E402
from reproduce_tables import SearchJob  # noqa: E402

TOLERANCE_PERCENT = 1.0
VARIANTS = {
    "demo": [],
    "paper-latch": ["--latch", "scale", "--latch_tolerance", "0.15", "--latch_epochs", "8"],
}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Raw landing of the demo search over many targets and seeds.",
                                     formatter_class=utils.DefaultsHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[float(t) for t in range(20, 31)],
                        help="target latencies, ms on the Jetson table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11], help="search seeds")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="searches side by side, one thread each")
    parser.add_argument("--search_arguments", nargs=argparse.REMAINDER, default=[],
                        help="more search_imagenet.py options for every run (last; e.g. a shorter schedule)")
    parser.add_argument("--out", default="landing", help="output folder")
    return parser


def plan(args):
    """(warm-up jobs, search jobs with their (variant, seed, target))."""
    common = ["--land_within", "0", "--workers", "0"] + args.search_arguments
    settings = search_imagenet.get_args_parser().parse_args(common)
    search_imagenet.resolve_schedule(settings)
    warmups = {seed: SearchJob(f"warm-up seed {seed}", os.path.join(args.out, "runs", f"warmup-s{seed}"),
                               common + ["--seed", str(seed), "--stop_after_epoch", str(settings.freeze_epochs)],
                               search_imagenet.WARMUP_CHECKPOINT_NAME)
               for seed in args.seeds}
    searches = []
    for variant in args.variants:  # one variant's runs all finish before the next's start
        for seed in args.seeds:
            start = ["--resume", os.path.join(warmups[seed].folder, search_imagenet.WARMUP_CHECKPOINT_NAME)]
            for target in args.targets:
                job = SearchJob(f"{variant} {target:g} ms seed {seed}",
                                os.path.join(args.out, "runs", f"{variant}-{target:g}ms-s{seed}"),
                                common + ["--seed", str(seed), "--target_latency", repr(target)]
                                + VARIANTS[variant] + start, "arch.json")
                searches.append((job, variant, seed, target))
    return list(warmups.values()), searches


def run_summary(job, variant, seed, target):
    """One finished search: what it landed and how much its supernet learned."""
    result, rows = search_imagenet.read_finished_search(job.folder)
    last = rows[-1]
    latched = [row["epoch"] for row in rows if row.get("latched")]
    return {
        "variant": variant, "seed": seed, "target": target, "landed": result["predicted"],
        "error_percent": result["error_percent"], "val_top1": last["val_top1"],
        "max_probability": float(np.max(last["probabilities"], axis=1).mean()),
        "latched_epoch": latched[0] if latched else None,
        "minutes": sum(row["seconds"] for row in rows) / 60.0,
    }


# ------------------------------------------- projection against greedy repair


def best_single_change(indices, log_p, score):
    """The one-layer change that lowers `score`, with the most probable new
    op (the lowest score among equals); None if no change lowers it."""
    current, best = score(indices), None
    for layer in range(len(indices)):
        for op in range(operations.NUM_OPS):
            if op == indices[layer]:
                continue
            candidate = indices[:layer] + [op] + indices[layer + 1:]
            value = score(candidate)
            if value < current and (best is None or (log_p[layer][op], -value) > best[0]):
                best = ((log_p[layer][op], -value), candidate)
    return None if best is None else best[1]


def greedy_repair(indices, log_p, cost, low, high):
    """The earlier --land_within/--strict: single-layer changes that shrink
    the distance to [low, high], the most probable op first, until the cost
    is in the band or no change helps."""
    def distance(candidate):
        value = cost(candidate)
        return max(low - value, value - high, 0.0)

    indices = list(indices)
    while distance(indices) > 0:
        change = best_single_change(indices, log_p, distance)
        if change is None:
            break
        indices = change
    return indices


COMPARED_BANDS = {"+-1%": (1.0, False), "+-0.25%": (0.25, False), "at most T": (0.0, True)}


def compare_projection_with_greedy(runs, searches):
    """Both methods on each run's final alpha, for every COMPARED_BANDS."""
    predictor = latency_predictor.load_predictor()

    def cost(indices):
        return float(predictor.costs(np.array([indices]))[0])

    rows = []
    for run, (job, *_) in zip(runs, searches):
        probabilities = np.array(utils.read_json_lines(
            os.path.join(job.folder, search_imagenet.METRICS_NAME))[-1]["probabilities"])
        log_p = np.log(probabilities)
        raw = [int(op) for op in probabilities.argmax(axis=1)]
        for name, (percent, strict) in COMPARED_BANDS.items():
            low, high = constraint.landing_band(run["target"], percent, strict)
            for method, indices in (("projection", constraint.project_to_band(log_p, predictor, low, high)),
                                    ("greedy", greedy_repair(raw, log_p, cost, low, high))):
                rows.append({"band": name, "method": method, "in_band": low <= cost(indices) <= high,
                             "changed": sum(a != b for a, b in zip(raw, indices)),
                             "given_up": float(sum(log_p[layer, raw[layer]] - log_p[layer, indices[layer]]
                                                   for layer in range(len(raw))))})
    print()
    print("the same final alphas projected into a band: exact projection vs greedy repair")
    print(f"{'band':<10} {'method':<11} {'in band':>8} {'layers changed (mean, max)':>27} "
          f"{'log p given up (mean, max)':>27}")
    for name in COMPARED_BANDS:
        for method in ("projection", "greedy"):
            chosen = [row for row in rows if row["band"] == name and row["method"] == method]
            changed, given_up = [row["changed"] for row in chosen], [row["given_up"] for row in chosen]
            print(f"{name:<10} {method:<11} {sum(row['in_band'] for row in chosen):>3} of {len(chosen):<3} "
                  f"{statistics.mean(changed):>19.2f}, {max(changed):>3} "
                  f"{statistics.mean(given_up):>21.3f}, {max(given_up):>5.3f}")
    return rows


def summarize(runs):
    errors = [abs(run["error_percent"]) for run in runs]
    return {
        "runs": len(runs),
        "within": sum(error <= TOLERANCE_PERCENT for error in errors),
        "median_abs_error_percent": statistics.median(errors),
        "worst_abs_error_percent": max(errors),
        "lowest_val_top1": min(run["val_top1"] for run in runs),
        "lowest_max_probability": min(run["max_probability"] for run in runs),
    }


def print_report(runs, variants):
    print(f"{'variant':<12} {'seed':>4} {'target':>6} {'landed':>7} {'error':>7} {'val top-1':>9} "
          f"{'max p':>6} {'latched':>7} {'min':>5}")
    for run in runs:
        latched = "-" if run["latched_epoch"] is None else str(run["latched_epoch"])
        print(f"{run['variant']:<12} {run['seed']:>4} {run['target']:>6g} {run['landed']:>7.2f} "
              f"{run['error_percent']:>+6.2f}% {run['val_top1']:>8.1f}% {run['max_probability']:>6.2f} "
              f"{latched:>7} {run['minutes']:>5.1f}")
    print()
    print(f"{'variant':<12} {'within 1%':>10} {'median |err|':>12} {'worst |err|':>11} {'lowest val':>10} "
          f"{'lowest max p':>12}")
    summaries = {}
    for variant in variants:
        summary = summaries[variant] = summarize([run for run in runs if run["variant"] == variant])
        print(f"{variant:<12} {summary['within']:>4} of {summary['runs']:<3} "
              f"{summary['median_abs_error_percent']:>11.2f}% {summary['worst_abs_error_percent']:>10.2f}% "
              f"{summary['lowest_val_top1']:>9.1f}% {summary['lowest_max_probability']:>12.2f}")
    return summaries


def plot(runs, variants, path):
    figure, axis = utils.new_figure((6, 4.5))
    targets = sorted({run["target"] for run in runs})
    axis.fill_between(targets, [t * (1 - TOLERANCE_PERCENT / 100) for t in targets],
                      [t * (1 + TOLERANCE_PERCENT / 100) for t in targets], color="grey", alpha=0.3,
                      label="within 1%")
    for offset, variant in zip((-0.12, 0.12), variants):
        chosen = [run for run in runs if run["variant"] == variant]
        axis.scatter([run["target"] + offset for run in chosen], [run["landed"] for run in chosen], s=14,
                     label=variant)
    axis.set(xlabel="target (ms, Jetson table)", ylabel="raw argmax (ms)", title="one search per point, no repair")
    axis.legend(fontsize=8)
    utils.save_figure(figure, path)


def check_args(args):
    """Every input, before any folder is made or any search starts."""
    predictor = latency_predictor.load_predictor()
    for target in args.targets:
        search_imagenet.check_target(predictor, target, "--targets")
    for seed in args.seeds:
        utils.check_seed(seed, "--seeds")
    names = [f"{target:g}" for target in args.targets]  # each target's folders are named so
    # One search listed twice would count twice.
    if any(utils.first_repeated(values) is not None for values in (names, args.seeds, args.variants)):
        raise UserError("--targets, --seeds and --variants must each name different values (targets are told "
                        f"apart by 6 significant digits: {' '.join(names)})")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    own = ("save", "seed", "target_latency", "resume", "stop_after_epoch")
    # The settings they parse to decide the kept searches: the same options in another order are the same run.
    args.search_settings = utils.forwarded_settings(search_imagenet.get_args_parser(), args.search_arguments,
                                                    "--search_arguments", sets_itself=own,
                                                    owner="landing.py for each search")


def main(args):
    check_args(args)
    warmups, searches = plan(args)
    with utils.tool_folder(args.out, "benchmarks/landing.py"):  # left empty by a failure, it is removed
        # Kept searches are reused only for the options that made them (targets and seeds may be added).
        utils.check_run_plan(args.out, {"search_arguments": args.search_settings}, "benchmarks/landing.py")
        utils.continued_by_rerun()
        log_folder = os.path.join(args.out, "logs")

        def report(job, seconds):
            state = "kept from an earlier run" if seconds is None else f"{seconds / 60:.1f} min"
            print(f"{job.name}: {state}", flush=True)

        reproduce_tables.run_jobs(warmups, report, log_folder, args.jobs, threads=1)
        reproduce_tables.run_jobs([job for job, *_ in searches], report, log_folder, args.jobs, threads=1)
        runs = [run_summary(*search) for search in searches]
        print()
        summaries = print_report(runs, args.variants)
        comparison = compare_projection_with_greedy(runs, searches)
        utils.write_json(os.path.join(args.out, "landing.json"),
                         {"runs": runs, "summaries": summaries, "projection_vs_greedy": comparison})
        plot(runs, args.variants, os.path.join(args.out, "landing.png"))


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())

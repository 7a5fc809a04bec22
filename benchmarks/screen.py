"""Judge a search variant in minutes, against a stored ground truth.

Retraining a searched network costs minutes; asking its supernet does not.
This script runs a variant's demo searches (or takes finished search
folders) and, for each, reads against a ground-truth file of random
networks retrained once (benchmarks/ground_truth.py):

- tau: Kendall's tau between the supernet's top-1 for each ground-truth
  network (inherited weights, BatchNorm recomputed for the path; on the val
  images of the set the truth was retrained on, 2,000 for the shipped ones,
  when the search ran on that generator's images) and that network's
  retrained top-1, with its 95% bootstrap interval over networks;
- pick: where the search's own network would stand, by the supernet's
  score, among the ground-truth networks (a percentile of their supernet
  scores: a prediction, not a retraining), and what it is made of (skips, and
  skips on a stride-2 layer, where standalone they keep a quarter of the
  positions through a strided 1x1 conv);
- control: the ground-truth network the supernet scores best, and where it
  truly stands;
- the mechanism: landing error, alpha's val top-1 and mean largest op
  probability at the end, the share of alpha's steps after the latch that the
  hold undid, and the search's time.

    python3 benchmarks/screen.py --name demo                                   # the demo, seeds 0 and 1, 24 ms
    python3 benchmarks/screen.py --name eta-late -- --eta_decay late           # a variant: search options after --
    python3 benchmarks/screen.py --folders search-demo other-search            # finished searches
    python3 benchmarks/screen.py --table                                       # every variant screened so far
    python3 benchmarks/screen.py --name demo --truth benchmarks/ground_truth/composite_24ms_cpu.json

A variant's searches run on the images of the proxy the ground truth was
retrained on: the demo's set for the shipped random_*ms_* files, the
composite set (search_quality.py --proxy composite) for a composite one.

Each screened variant is appended to --out/screens.jsonl; --table prints
them side by side. Searches run --jobs at a time, one thread each; a rerun
keeps the finished ones.
"""

import argparse
import hashlib
import math
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ground_truth  # noqa: E402
import latency_predictor  # noqa: E402
import reproduce_tables  # noqa: E402
import search_imagenet  # noqa: E402
import search_quality  # noqa: E402
import utils  # noqa: E402
from utils import UserError, read_json_lines  # noqa: E402

SCREENS_NAME = "screens.jsonl"
GIVE_A_FINISHED_SEARCH = "give the folder of a finished search (a variant's own: delete it to search again)"


def get_args_parser():
    parser = argparse.ArgumentParser(description="Screen search variants against a stored ground truth.",
                                     formatter_class=utils.DefaultsHelpFormatter)
    parser.add_argument("--name", default=None, help="the variant's name (its searches go to --out/NAME/; with "
                                                          "--folders, the label of their row)")
    parser.add_argument("--folders", nargs="+", default=None, help="finished search folders to screen instead")
    parser.add_argument("--target", type=float, default=24.0, help="target latency, ms on the Jetson table")
    parser.add_argument("--search_seeds", type=int, nargs="+", default=[0, 1], help="one search per seed")
    parser.add_argument("--truth", nargs="+", default=None,
                        help="ground-truth file(s) for --target; several are pooled, each network ranked by the "
                             "mean of all its retrainings (default: the shipped ones for --target)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="searches side by side, one thread each")
    parser.add_argument("--out", default="screens", help="folder for the searches and screens.jsonl")
    parser.add_argument("--table", action="store_true", help="print every variant in --out/screens.jsonl")
    parser.add_argument("search_arguments", nargs=argparse.REMAINDER,
                        help="after --: search_imagenet.py options that make the variant")
    return parser


# ------------------------------------------------------------- the searches


def run_variant(args, scale):
    """Run (or keep) one search per seed on `scale`'s search set (the proxy
    the ground truth was retrained on); their folders."""
    extra = search_quality.scale_search_arguments(scale) + [item for item in args.search_arguments if item != "--"]
    common = ["--target_latency", str(args.target), "--land_within", "0", "--workers", "0"] + extra
    jobs = [reproduce_tables.SearchJob(f"{args.name} seed {seed}", os.path.join(args.out, args.name, f"seed{seed}"),
                                       common + ["--seed", str(seed)], "arch.json")
            for seed in args.search_seeds]

    def report(job, seconds):
        print(f"  {job.name}: {'kept' if seconds is None else f'searched in {seconds:.0f} s'}", flush=True)

    # A rerun keeps a seed's finished search only for the options that made it.
    variant_folder = os.path.join(args.out, args.name)
    os.makedirs(variant_folder, exist_ok=True)
    utils.check_run_plan(variant_folder, {"target": args.target, "search_arguments": extra}, "benchmarks/screen.py")
    utils.continued_by_rerun()
    print(f"{args.name}: {len(jobs)} search(es) for {args.target:g} ms {' '.join(extra)}", flush=True)
    reproduce_tables.run_jobs(jobs, report, os.path.join(args.out, args.name, "logs"), args.jobs, threads=1)
    return [job.folder for job in jobs]


# ---------------------------------------------------------------- measures


def hold_undone_share(rows):
    """Of alpha's steps taken while latched, the share the hold undid (None
    when the latch never engaged)."""
    latched = undone = 0
    for row in rows:
        steps = row.get("steps") or {}
        for on, was_undone in zip(steps.get("latched", []), steps.get("undone", [])):
            latched += bool(on)
            undone += bool(was_undone)
    return undone / latched if latched else None


def search_identity(folder):
    """What tells searches apart: the bytes of a finished search's arch.json
    and metrics.jsonl (a copy of a folder is the same search), else its path."""
    files = [os.path.join(folder, name) for name in (search_imagenet.ARCH_NAME, search_imagenet.METRICS_NAME)]
    if not all(os.path.isfile(path) for path in files):
        return os.path.realpath(folder)
    digest = hashlib.sha256()
    for path in files:
        with utils.open_for_reading(path, "search file", encoding="latin-1") as file:
            digest.update(file.read().encode("latin-1"))
    return digest.hexdigest()


def finished_search(folder, target):
    """The arch.json of a finished search for `target` ms on the table the
    ground truth is about (the default one)."""
    # An arch.json that is no regular file (a device, a pipe) is named by read_finished_search.
    utils.refuse_non_folder(folder, "--folders:")
    if not os.path.lexists(os.path.join(folder, search_imagenet.ARCH_NAME)):
        raise UserError(f"{folder} holds no finished search (no arch.json)")
    result = search_imagenet.read_finished_search(folder, GIVE_A_FINISHED_SEARCH)[0]
    if result["target"] != target:
        raise UserError(f"{folder} searched for {result['target']:g} ms, not --target {target:g}: give --target "
                        f"{result['target']:g} and its ground truth")
    default = latency_predictor.load_predictor().identifier
    if result.get("predictor", default) != default:
        raise UserError(f"{folder} searched on {result['predictor']}; the ground truth is about {default}")
    return result


def search_health(folder):
    """What the search itself did: landing, alpha's accuracy and
    concentration at the end, the hold's undo share, its time."""
    result, rows = search_imagenet.read_finished_search(folder, GIVE_A_FINISHED_SEARCH)
    last = rows[-1]
    try:
        return {
            "arch_config": result["arch_config"],
            "predicted": result["predicted"],
            "error_percent": result["error_percent"],
            "val_top1": last["val_top1"],
            "max_p": statistics.fmean(max(layer) for layer in last["probabilities"]),
            "undone_share": hold_undone_share(rows),
            "search_seconds": sum(row["seconds"] for row in rows),
        }
    except (KeyError, TypeError, ValueError, AttributeError, statistics.StatisticsError) as error:
        raise UserError(f"{folder}: its metrics.jsonl or arch.json is not a finished search's (edited? "
                        f"{type(error).__name__}: {str(error)[:80]}); give the folder of a finished search") from None


def percentile_among(value, others):
    """Share of `others` strictly below `value`, plus half the ties (%)."""
    below = sum(other < value for other in others)
    ties = sum(other == value for other in others)
    return 100.0 * (below + 0.5 * ties) / len(others)


def screen_search(folder, truth):
    """The health of one search and how its supernet reads the ground truth."""
    health = search_health(folder)
    nets = truth["networks"]
    true_top1 = [statistics.fmean(net["top1"]) for net in nets]
    scores = search_quality.supernet_scores(folder, [net["arch_config"] for net in nets] + [health["arch_config"]],
                                            truth["dataset"])
    truth_scores, pick_score = scores[:-1], scores[-1]
    best = max(range(len(nets)), key=lambda index: truth_scores[index])
    mix = search_quality.op_mix(health["arch_config"])
    return dict(
        health,
        folder=folder,
        tau=search_quality.kendall_tau(truth_scores, true_top1),
        tau_95=search_quality.bootstrap_interval(truth_scores, true_top1, search_quality.kendall_tau),
        pick_supernet_top1=pick_score,
        pick_supernet_percentile=percentile_among(pick_score, truth_scores),
        skips=mix["skips"],
        strided_skips=mix["strided_skips"],
        early_skips=mix["early_skips"],
        control=nets[best]["name"],
        control_percentile=percentile_among(true_top1[best], true_top1),
    )


# ------------------------------------------------------------------ report


def summary_row(name, screens, extra, truth_paths, seconds):
    def average(key):
        values = [screen[key] for screen in screens if screen[key] is not None]
        return statistics.fmean(values) if values else None

    return {"name": name, "search_arguments": extra, "truth": truth_paths, "searches": screens,
            "tau_mean": average("tau"), "pick_percentile_mean": average("pick_supernet_percentile"),
            "strided_skips": [screen["strided_skips"] for screen in screens],
            "abs_error_max": max(abs(screen["error_percent"]) for screen in screens),
            "val_top1_mean": average("val_top1"), "undone_share_mean": average("undone_share"),
            "search_seconds_mean": average("search_seconds"), "screen_seconds": seconds}


def number(value, digits=2, signed=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def short_name(folder):
    """The last two parts of a search folder's path (variant/seed)."""
    return os.path.join(*os.path.normpath(folder).split(os.sep)[-2:])


def print_searches(screens):
    print(f"\n{'search':<28} {'ms':>6} {'err%':>6} {'val':>5} {'maxp':>5} {'undone':>6} {'tau':>6} "
          f"{'tau 95%':>14} {'pick %':>6} {'skip':>4} {'s2':>3} {'early':>5}  control (its true %)")
    for screen in screens:
        low, high = screen["tau_95"]
        undone = screen["undone_share"]
        print(f"{short_name(screen['folder']):<28} "
              f"{screen['predicted']:>6.2f} {screen['error_percent']:>+6.2f} {screen['val_top1']:>5.1f} "
              f"{screen['max_p']:>5.2f} {number(None if undone is None else 100 * undone, 0):>6} "
              f"{screen['tau']:>+6.2f} [{low:+.2f}, {high:+.2f}] {screen['pick_supernet_percentile']:>6.0f} "
              f"{screen['skips']:>4} {screen['strided_skips']:>3} {screen.get('early_skips', '-'):>5}  "
              f"{screen['control']} "
              f"({screen['control_percentile']:.0f}%)")


MEAN_KEYS = ("tau_mean", "pick_percentile_mean", "val_top1_mean", "undone_share_mean", "search_seconds_mean")


def is_number(value):
    """An int or float, NaN included (tau is NaN when the scores tie)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_screens(path):
    """The rows of a screens.jsonl, each checked to be a row summary_row
    wrote (what --table prints), so an edited one is named, not a KeyError."""
    rows = read_json_lines(path)
    for number, row in enumerate(rows, start=1):
        fits = (isinstance(row.get("name"), str) and utils.is_finite_number(row.get("abs_error_max"))
                and isinstance(row.get("strided_skips"), list) and isinstance(row.get("search_arguments"), list)
                and all(isinstance(item, str) for item in row["search_arguments"])
                and all(row.get(key) is None or is_number(row[key]) for key in MEAN_KEYS)
                and all(key in row for key in MEAN_KEYS))
        if not fits:
            raise UserError(f"{path}: line {number} is not a screened variant's row (edited?); repair or remove "
                            "that line")
    return rows


def print_table(rows):
    print(f"\n{'variant':<22} {'tau':>6} {'pick %':>6} {'s2 skips':>8} {'|err| max':>9} {'val':>5} {'undone':>6} "
          f"{'search s':>8}  options")
    for row in rows:
        undone = row["undone_share_mean"]
        print(f"{row['name']:<22} {number(row['tau_mean'], 2, True):>6} {number(row['pick_percentile_mean'], 0):>6} "
              f"{','.join(str(n) for n in row['strided_skips']):>8} {row['abs_error_max']:>8.2f}% "
              f"{number(row['val_top1_mean'], 1):>5} {number(None if undone is None else 100 * undone, 0):>5}% "
              f"{number(row['search_seconds_mean'], 0):>8}  {' '.join(row['search_arguments'])}")


def resolve_truth(args):
    paths = args.truth or ground_truth.shipped_truth_paths(args.target)
    if not paths:
        raise UserError(f"no ground truth for {args.target:g} ms in {ground_truth.TRUTH_DIR}; build one with "
                        f"benchmarks/ground_truth.py --target {args.target:g} --out FILE and pass --truth FILE")
    truth = ground_truth.pooled_truth(paths)
    if truth["target"] != args.target:
        raise UserError(f"--truth {' '.join(paths)} holds networks for {truth['target']:g} ms, not --target "
                        f"{args.target:g}")
    try:
        search_quality.scale_of_truth(truth)  # the variant's searches run on that set's images
    except UserError as error:
        raise UserError(f"--truth {' '.join(paths)}: {error}") from None
    return paths, truth


def main(args):
    screens_path = os.path.join(args.out, SCREENS_NAME)
    if args.table:
        ignored = [name for name, given in (("--name", args.name is not None), ("--folders", args.folders is not None),
                                            ("search options", any(item != "--" for item in args.search_arguments)))
                   if given]
        if ignored:
            raise UserError(f"--table prints the variants screened so far and screens nothing; drop {ignored[0]}, "
                            "or drop --table to screen")
        if not os.path.lexists(screens_path):
            raise UserError(f"{screens_path} does not exist yet: screen a variant first")
        print_table(read_screens(screens_path))
        return
    if args.name is None and args.folders is None:
        raise UserError("give --name (run a variant's searches) or --folders (screen finished searches; --name "
                        "then labels them)")
    if args.name is not None and (os.path.basename(args.name) != args.name or args.name in (".", "..")
                                  or not args.name.isprintable()):
        raise UserError(f"--name {args.name!r} must be a plain name (it becomes a folder inside --out and a row of "
                        "the table): no '/', no line break or other control character, not '.' or '..'")
    extra = [item for item in args.search_arguments if item != "--"]
    utils.parse_forwarded_arguments(search_imagenet.get_args_parser(), ["--target_latency", str(args.target)] + extra,
                                    "the search options after --")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    bad_seeds = [seed for seed in args.search_seeds if not 0 <= seed <= utils.MAX_SEED]
    if bad_seeds:
        raise UserError(f"--search_seeds must be in [0, {utils.MAX_SEED}], got {bad_seeds[0]}")
    # One search counted twice would weigh twice in the variant's means (and two runs of it share a folder).
    repeated_seed = utils.first_repeated(args.search_seeds)
    if repeated_seed is not None:
        raise UserError(f"--search_seeds names seed {repeated_seed} twice; give each once")
    repeated_folder = utils.first_repeated(args.folders or [], key=search_identity)
    if repeated_folder is not None:
        raise UserError(f"--folders names the search in {repeated_folder} twice (a folder or a copy of it); give "
                        "each search once")
    search_quality.check_target_reachable(args.target)  # before asking for a ground truth of it
    truth_paths, truth = resolve_truth(args)
    if os.path.lexists(screens_path) and not os.path.isfile(screens_path):  # appended to after all the scoring
        raise UserError(f"{screens_path} is not a file (a folder, a pipe or a broken link); remove it or choose "
                        "another --out")
    name = args.name or "folders"
    if os.path.isfile(screens_path) and any(row["name"] == name for row in read_screens(screens_path)):
        # A second row of one name would be listed twice by --table, the two indistinguishable.
        raise UserError(f"{screens_path} already holds a variant named {name!r}; give another --name, or remove "
                        "its row to screen it again")
    started = time.time()
    for folder in args.folders or []:  # before --out is made: a wrong folder leaves nothing behind
        finished_search(folder, args.target)
        search_health(folder)
    with utils.tool_folder(args.out, "benchmarks/screen.py"):  # left empty by a failure, it is removed
        folders = args.folders
        if folders is None:  # the variant's own searches, checked as given folders were above
            folders = run_variant(args, search_quality.scale_of_truth(truth))
            for folder in folders:
                finished_search(folder, args.target)
        print(f"scoring {len(truth['networks'])} ground-truth networks ({', '.join(truth_paths)}) with each "
              "supernet ...", flush=True)
        screens = [screen_search(folder, truth) for folder in folders]
        print_searches(screens)
        row = summary_row(name, screens, extra, truth_paths, time.time() - started)
        print_table([row])
        # The file is written anew, not appended to: a run killed mid-write leaves the rows before it whole.
        earlier = read_screens(screens_path) if os.path.isfile(screens_path) else []
        utils.write_json_lines(screens_path, earlier + [row])
        print(f"\nappended to {screens_path} ({row['screen_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())

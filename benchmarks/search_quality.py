"""Is the searched network better than random networks of the same latency?

The question a NAS method must answer (Yu et al., "Evaluating the Search
Phase of Neural Architecture Search", ICLR 2020, found several one-shot
methods that do not beat random sampling). For one target T on the Jetson
table this script

1. runs --searches independent demo searches (`search_imagenet.py`, no
   --dataset: the synthetic 10-class set at 32 px) for T, search seeds
   --search_seed, --search_seed + 1, ...;
2. draws architectures uniformly at random (a uniform op per layer),
   rejecting each until its predicted latency is within +-1% of T by the
   same table;
3. scores every architecture with each search's supernet (its inherited
   weights, BatchNorm statistics recomputed for that path on training
   batches first, as in single-path one-shot NAS), on the retraining set's
   2,000 val images (the demo's generator; alpha's 300 images are among
   them; a search on other images is scored on its own val/);
4. retrains every network from scratch with the short recipe
   (`retraining.SHORT_RECIPE` on `retraining.RETRAIN_DATASET`, through
   train_imagenet.py) with --seeds paired seeds: seed s gives every
   architecture the same data order and the same random stream for its
   initial weights; the --reference network (a released LightNet) is
   retrained too, as a yardstick outside the statistics;
5. prints and writes `search_quality.json` and `search_quality.png`: top-1
   per architecture (mean and std over seeds), each searched network's
   rank, percentile and z-score among the random ones, the spread across
   architectures next to the spread across seeds, Kendall's tau between
   supernet and standalone accuracy (95% bootstrap interval over networks),
   and a control: the random network the supernet itself scores best.

    python3 benchmarks/search_quality.py            # 2 searches, 16 random nets, 3 seeds (about 75 min, 2 cores)
    python3 benchmarks/search_quality.py --quick    # 1 search, 4 random nets, 2 seeds
    python3 benchmarks/search_quality.py --target 27 --random_nets 24 --out sq27
    python3 benchmarks/search_quality.py --truth benchmarks/ground_truth/random_24ms_cuda.json   # on a GPU
    python3 benchmarks/search_quality.py --truth benchmarks/ground_truth/random_24ms_cpu.json --out sq-warmup6 -- --freeze_epochs 6

With --truth the random networks and their retrained top-1 come from a
stored ground truth (benchmarks/ground_truth.py) instead of being drawn and
retrained again: only the searched networks and the reference are
retrained, with the file's recipe and seeds, on a device of the file's kind.
Options after `--` go to every search: a variant of the demo (benchmarks/
screen.py judges variants in minutes; this retrains their picks).

Every run (search and each retraining) has its own folder under --out; a
rerun with the same settings reuses the finished ones, so an interrupted
benchmark continues where it stopped. Retrainings run --jobs at a time, each
with one thread (on a shared CPU, more threads per process only spin).
--toy runs the same pipeline on a tiny set in about a minute (its numbers
mean nothing; the tests use it). --proxy composite runs it on a harder
synthetic task (twenty shape-and-fill classes, searches on 30 train and 15
val images per class, retrainings of 32 epochs on 125 and 100), where random
networks of 24 ms do not crowd near 95% as on the demo's set.
"""

import argparse
import dataclasses
import math
import os
import random
import statistics
import sys
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data  # noqa: E402
import ground_truth  # noqa: E402
import latency_predictor  # noqa: E402
import operations  # noqa: E402
import reproduce_tables  # noqa: E402
import retraining  # noqa: E402
import search_imagenet  # noqa: E402
import utils  # noqa: E402
from model_search import path_top1  # noqa: E402
from model_train import resolve_arch_config  # noqa: E402
from utils import UserError  # noqa: E402

LATENCY_TOLERANCE = 0.01  # random networks lie within +-1% of the target
MAX_DRAWS = 1_000_000
BN_CALIBRATION_BATCHES = 10
BOOTSTRAP_SAMPLES = 2000
PRINT_LOCK = threading.Lock()  # retrainings finish on several threads


@dataclasses.dataclass(frozen=True)
class Scale:
    """What the searches and retrainings run on."""

    name: str
    search_dataset: dict | None  # data.synthetic_dataset parameters; None: the search demo's own
    search_schedule: dict | None  # search_imagenet options; None: the demo's defaults
    retrain_dataset: dict        # data.synthetic_dataset parameters
    retrain_recipe: dict         # changes to retraining.SHORT_RECIPE


FULL = Scale("full", None, None, dict(retraining.RETRAIN_DATASET), {})
# A harder proxy (--proxy composite): the twenty shape-and-fill classes, on
# which random networks of 24 ms spread over 67-81% (patterns: 89-97%, near
# saturation). The searches see as many images as the demo's (30 train and
# 15 val per class, a subset of the retraining set's); the retraining set
# has 125 train and 100 val per class and the recipe 32 epochs, about six
# minutes per network on one core (measured in docs/results.md).
COMPOSITE = Scale("composite", dict(kind="composite", train_per_class=30, val_per_class=15, image_size=32),
                  dict(schedule="demo"),
                  dict(kind="composite", train_per_class=125, val_per_class=100, image_size=32), dict(epochs=32))
PROXIES = {"patterns": FULL, "composite": COMPOSITE}
# The pipeline at toy size for tests: reproduce_tables' CI-sized search cut
# to 2 epochs, the warm-up and one alpha epoch of 5 steps each way (its
# numbers mean nothing; every step runs), one retraining epoch over 8 images
# per class.
TOY = Scale("toy", dict(reproduce_tables.QUICK.dataset),
            dict(reproduce_tables.QUICK.schedule, epochs=2, freeze_epochs=1, latch_epochs=1, arch_lr_step=1,
                 batch_size_val=32),
            dict(train_per_class=8, val_per_class=8, image_size=32), dict(epochs=1, batch_size=16))


# How many searches, random networks and retraining seeds; options given win.
COUNTS = {"full": dict(searches=2, random_nets=16, seeds=3), "quick": dict(searches=1, random_nets=4, seeds=2)}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Searched networks vs random networks of equal predicted latency.",
                                     formatter_class=utils.DefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=24.0, help="target latency T, ms on the Jetson table")
    parser.add_argument("--searches", type=int, default=None,
                        help=f"independent searches (search seeds) (default: {COUNTS['full']['searches']}, "
                             f"--quick {COUNTS['quick']['searches']})")
    parser.add_argument("--random_nets", type=int, default=None,
                        help=f"random architectures within +-1%% of T (default: {COUNTS['full']['random_nets']}, "
                             f"--quick {COUNTS['quick']['random_nets']})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"paired retraining seeds per architecture (default: {COUNTS['full']['seeds']}, "
                             f"--quick {COUNTS['quick']['seeds']})")
    parser.add_argument("--reference", default="LightNet-24ms",
                        help="a released network retrained alongside, outside the statistics ('none': skip)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer of each: the --quick counts of --searches, --random_nets, --seeds")
    parser.add_argument("--toy", action="store_true", help="the whole pipeline on a tiny set (tests; numbers "
                                                            "mean nothing)")
    add_proxy_option(parser)
    parser.add_argument("--retrain_epochs", type=int, default=None,
                        help=f"retraining epochs (recipe: {retraining.SHORT_RECIPE['epochs']})")
    parser.add_argument("--search_seed", type=int, default=0, help="the first search's --seed")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the random architectures")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="searches or retrainings run side by side, one thread each")
    parser.add_argument("--truth", default=None,
                        help="a ground-truth file (benchmarks/ground_truth.py): its random networks and their "
                             "results stand in for --random_nets, --sample_seed and --seeds")
    parser.add_argument("--out", default="search-quality", help="output folder")
    parser.add_argument("search_arguments", nargs=argparse.REMAINDER,
                        help="after --: search_imagenet.py options given to every search (a variant of the demo)")
    return parser


def add_proxy_option(parser):
    parser.add_argument("--proxy", choices=sorted(PROXIES), default=None,
                        help="the synthetic task searches and retrainings run on: 'patterns' (the demo's ten "
                             "classes; the default) or 'composite' (twenty shape-and-fill classes, on which random "
                             "networks spread further; its own recipe of 32 epochs); with --truth, the file's")


def scale_of_truth(truth):
    """The scale a ground-truth file was retrained at (its dataset names it)."""
    for scale in (*PROXIES.values(), TOY):
        if scale.retrain_dataset == truth["dataset"]:
            return scale
    raise UserError(f"its dataset {truth['dataset']} is none this benchmark retrains on (--proxy "
                    f"{' or '.join(PROXIES)}, or --toy)")


def check_args(args):
    args.search_arguments = [item for item in args.search_arguments if item != "--"]
    utils.check_seed(args.sample_seed, "--sample_seed")
    utils.check_seed(args.search_seed, "--search_seed")
    # A misspelt variant option fails here, in one line, not in every search's log.
    utils.parse_forwarded_arguments(search_imagenet.get_args_parser(),
                                    ["--target_latency", str(args.target)] + args.search_arguments,
                                    "the search options after --")
    truth = None if args.truth is None else ground_truth.load_truth(args.truth, complete=True)
    args.scale = chosen_scale(args, truth)
    if args.retrain_epochs is None:
        args.retrain_epochs = args.scale.retrain_recipe.get("epochs", retraining.SHORT_RECIPE["epochs"])
    check_target_reachable(args.target)
    args.truth_data = None if truth is None else checked_truth(args, truth)
    for name, value in COUNTS["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.random_nets < 2 or min(args.searches, args.seeds, args.jobs, args.retrain_epochs) < 1:
        raise UserError("--random_nets must be at least 2; --searches, --seeds, --jobs and --retrain_epochs "
                        "at least 1")
    for option, value, most in (("--random_nets", args.random_nets, retraining.MAX_NETS),
                                ("--searches", args.searches, retraining.MAX_SEARCHES),
                                ("--seeds", args.seeds, retraining.MAX_SEEDS),
                                ("--retrain_epochs", args.retrain_epochs, utils.MAX_EPOCHS)):
        if value > most:
            raise UserError(f"{option} {value} is more than the {most} this benchmark allows")
    if args.reference.lower() == "none":
        args.reference = None
    else:
        args.reference_arch = resolve_arch_config(args.reference)


def chosen_scale(args, truth):
    """--toy's tiny set, else the --truth file's, else --proxy's."""
    if args.toy:
        if args.proxy is not None:
            raise UserError("--toy runs on its own tiny set; drop --proxy or --toy")
        return TOY
    if truth is None:
        return PROXIES[args.proxy or "patterns"]
    try:
        scale = scale_of_truth(truth)
    except UserError as error:
        raise UserError(f"--truth {args.truth}: {error}") from None
    if args.proxy is not None and PROXIES[args.proxy] is not scale:
        raise UserError(f"--truth {args.truth} was retrained on another set than --proxy {args.proxy}'s; drop "
                        "--proxy (the file decides it)")
    return scale


def checked_truth(args, truth):
    """The --truth file, when its results can stand beside retrainings made
    here with this scale's recipe; --seeds and --random_nets follow it."""
    if truth["target"] != args.target:
        raise UserError(f"--truth {args.truth} holds networks for {truth['target']:g} ms, not --target {args.target:g}")
    recipe = dict(retraining.SHORT_RECIPE, **retrain_recipe(args))
    device_type = ground_truth.describe_device()["type"]
    mismatch = ground_truth.same_recipe(truth, recipe, args.scale.retrain_dataset, device_type)
    if mismatch is not None:
        raise UserError(f"--truth {args.truth} cannot stand beside retrainings made here: {mismatch}")
    for name, value in (("seeds", len(truth["seeds"])), ("random_nets", len(truth["networks"]))):
        if getattr(args, name) not in (None, value):
            raise UserError(f"--truth {args.truth} holds {value} for --{name}, not {getattr(args, name)}: drop "
                            f"--{name} (the file fixes the random networks and their retraining seeds)")
        setattr(args, name, value)
    return truth


def check_target_reachable(target):
    search_imagenet.check_target(latency_predictor.load_predictor(), target, "--target")


# ------------------------------------------------------------------ searches


def search_jobs(args):
    """One search job per search seed, each in its own folder."""
    # One thread and no loading processes each: searches run --jobs at a time.
    common = ["--target_latency", str(args.target), "--land_within", "0", "--workers", "0"]
    common += scale_search_arguments(args.scale) + args.search_arguments  # last: the variant's options win
    seeds = range(args.search_seed, args.search_seed + args.searches)
    return [reproduce_tables.SearchJob(f"search seed {seed}", os.path.join(args.out, "searches", f"seed{seed}"),
                                       common + ["--seed", str(seed)], "arch.json")
            for seed in seeds]


def scale_search_arguments(scale):
    """The search options that put a search on `scale`'s own set and
    schedule (none for the demo's)."""
    if scale.search_dataset is None:
        return []
    dataset = data.synthetic_dataset(**scale.search_dataset)
    classes = data.synthetic_class_count(**scale.search_dataset)
    return (["--dataset", dataset, "--num_classes", str(classes)]
            + reproduce_tables.schedule_arguments(scale.search_schedule))


def run_searches(args):
    """Each search's arch.json and folder; finished ones are reused if they
    were made with this run's options."""
    jobs = search_jobs(args)

    def report(job, seconds):
        kept = "kept from an earlier run" if seconds is None else f"done in {seconds:.0f} s"
        print(f"  {job.name}: {kept}", flush=True)

    print(f"running {len(jobs)} search(es) for {args.target:g} ms ...", flush=True)
    reproduce_tables.run_jobs(jobs, report, os.path.join(args.out, "logs"), args.jobs, threads=1)
    return [(search_imagenet.read_finished_search(job.folder)[0], job.folder)
            for job in jobs]


# ------------------------------------------------------------ architectures


def random_architectures(count, target, seed):
    """`count` uniform random architectures within +-1% of `target` by the
    Jetson table, with the number of draws that took."""
    predictor = latency_predictor.load_predictor()
    found, draws, batch_seed = [], 0, seed
    while len(found) < count:
        for indices in latency_predictor.sample_architectures(1000, batch_seed):
            draws += 1
            arch_config = operations.indices_to_arch(indices.tolist())
            cost = predictor.cost(arch_config)
            if abs(cost / target - 1.0) <= LATENCY_TOLERANCE and arch_config not in [a for a, _ in found]:
                found.append((arch_config, cost))
                if len(found) == count:
                    break
        batch_seed += 1_000_003
        if draws > MAX_DRAWS:
            raise UserError(f"fewer than {count} random architectures within 1% of {target:g} ms "
                            f"in {MAX_DRAWS} draws")
    return found, draws


# Early layers: from layer 1 to the third stride-2 layer (layers 1-6). On the
# 24 ms ground truth a skip there is what separates the worst random networks
# from the rest (docs/results.md); a skip later costs nothing visible.
EARLY_LAST_LAYER = [index for index, spec in enumerate(operations.LAYOUT) if index and spec.stride == 2][2]


def op_mix(arch_config):
    """Skip connections (all; those on a stride-2 layer, where the skip is a
    strided 1x1 conv that keeps a quarter of the positions; those in the early
    layers 1..EARLY_LAST_LAYER), mean kernel and mean expansion over the
    searched layers (a SkipConnect counts in neither mean)."""
    configs = [operations.parse_mbconv(name) for name in arch_config[1:]]
    mbconvs = [config for config in configs if config is not None]
    strides = [spec.stride for spec in operations.LAYOUT[1:]]
    return {"skips": len(configs) - len(mbconvs),
            "strided_skips": sum(config is None and stride == 2 for config, stride in zip(configs, strides)),
            "early_skips": sum(config is None for config in configs[:EARLY_LAST_LAYER]),
            "kernel": statistics.fmean(config.kernel_size for config in mbconvs),
            "expansion": statistics.fmean(config.expansion for config in mbconvs)}


# --------------------------------------------------------- supernet scores


def load_supernet(search_folder):
    """The supernet a finished search ended with, and its settings; a
    checkpoint that is not that one (another search's put in its place) is
    refused."""
    path = os.path.join(search_folder, search_imagenet.CHECKPOINT_NAME)
    expected = search_imagenet.read_finished_search(search_folder)[0].get("checkpoint_sha256")
    if not os.path.isfile(path) or utils.file_sha256(path) != expected:
        raise UserError(f"{path} is not the checkpoint its search ended with (arch.json records another: replaced, "
                        "edited or missing); delete that search's folder to run it again (or give another)")
    checkpoint = utils.load_checkpoint(path, "search checkpoint")
    saved = argparse.Namespace(**checkpoint["args"])
    classifier_weights = [value for key, value in checkpoint["state_dict"].items()
                          if key.startswith("classifier.") and value.ndim == 2]
    supernet = search_imagenet.build_supernet(classifier_weights[-1].shape[0], saved)
    supernet.load_state_dict(checkpoint["state_dict"])
    return supernet, saved


def scoring_images(saved, retrain_dataset):
    """The dataset whose val/ images score the paths: for a search on the
    synthetic set the networks are retrained on (the same generator, in
    other numbers: `retrain_dataset`, data.synthetic_dataset parameters),
    that set's val/ (at full scale 2,000 images, among them alpha's 300: one
    image is 0.05 points instead of 0.33); otherwise the search's own val/."""
    meta = data.read_synthetic_metadata(saved.dataset)
    retrain = data.synthetic_metadata(**retrain_dataset)
    same_generator = meta is not None and all(meta.get(key) == retrain[key] for key in
                                              ("format_version", "kind", "num_classes", "image_size", "seed",
                                               "classes"))
    return data.synthetic_dataset(**retrain_dataset) if same_generator else saved.dataset


def supernet_scores(search_folder, arch_configs, retrain_dataset):
    """Each architecture's supernet top-1 (see supernet_top1): BatchNorm
    calibrated on the search's train/ images, top-1 on `scoring_images`."""
    supernet, saved = load_supernet(search_folder)
    eta = search_imagenet.eta_at(saved.epochs - 1, saved)
    eval_transform = data.build_eval_transform(saved.image_size, data.eval_crop_ratio(saved.augment))
    train_set = data.image_folder(saved.dataset, "train", eval_transform)
    val_set = data.image_folder(scoring_images(saved, retrain_dataset), "val", eval_transform)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=100)
    scores = []
    for arch_config in arch_configs:
        # Every path calibrates on the same batches, so its score does not depend on its place in the list.
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=saved.batch_size_train, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0))
        scores.append(path_top1(supernet, operations.arch_to_indices(arch_config), eta, train_loader, val_loader,
                                BN_CALIBRATION_BATCHES))
    return scores


# ---------------------------------------------------------------- retraining


def retrain_recipe(args):
    """The scale's changes to retraining.SHORT_RECIPE, with --retrain_epochs."""
    return dict(args.scale.retrain_recipe, epochs=args.retrain_epochs)


def retrain_all(nets, args, known=None, on_done=None):
    """Fill each net's "top1" with its retrained val top-1 per seed.

    Seed-major order (every network's seed 0 first), so that a run stopped
    halfway leaves one result for each network rather than all for a few.
    `known` maps (name, seed) to a top-1 already measured (not retrained);
    `on_done(net, seed, top1)` is called as each retraining finishes."""
    dataset = data.synthetic_dataset(**args.scale.retrain_dataset)
    recipe = retrain_recipe(args)
    known = {} if known is None else known  # the caller's own dict, even empty: on_done reads it
    jobs = [(net, seed) for seed in range(args.seeds) for net in nets if (net["name"], seed) not in known]
    print(f"retraining {len(jobs)} networks ({args.retrain_epochs} epochs each, {args.jobs} at a time) ...",
          flush=True)

    def retrain(job):
        net, seed = job
        folder = os.path.join(args.out, "retrain", f"{net['name']}-seed{seed}")
        top1 = retraining.retrain(net["arch_config"], folder, dataset, seed, **recipe)
        with PRINT_LOCK:
            print(f"  {net['name']} seed {seed}: final val top-1 {top1:.2f}%", flush=True)
        return top1

    def finished(job, top1):
        known[(job[0]["name"], job[1])] = top1
        if on_done is not None:
            on_done(*job, top1)

    retraining.run_in_parallel(retrain, jobs, args.jobs, finished)
    for net in nets:
        net["top1"] = [known[(net["name"], seed)] for seed in range(args.seeds)]


# --------------------------------------------------------------- statistics


def kendall_tau(xs, ys):
    """Kendall's tau-b (ties counted in neither concordant nor discordant
    pairs, and corrected for)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def bootstrap_interval(xs, ys, statistic, samples=BOOTSTRAP_SAMPLES, seed=0):
    """95% percentile-bootstrap interval of statistic(xs, ys), resampling
    the (x, y) pairs with replacement; samples whose statistic is undefined
    (all values tied) are left out."""
    rng = random.Random(seed)
    pairs = list(zip(xs, ys))
    values = []
    for _ in range(samples):
        resampled = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        value = statistic([x for x, _ in resampled], [y for _, y in resampled])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def mean(values):
    return statistics.fmean(values)


def std(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def standing(value, random_means):
    """Where one mean top-1 stands among the random networks' means."""
    spread = std(random_means)
    return {"rank": 1 + sum(other > value for other in random_means),
            "percentile": 100.0 * sum(other < value for other in random_means) / len(random_means),
            "z": (value - mean(random_means)) / spread if spread else float("nan")}


def summarize(searched, random_nets, supernets):
    """Each searched net's standing, the spreads, and per supernet the tau
    between its scores and standalone top-1 and the control (the random net
    it scores best)."""
    random_means = [mean(net["top1"]) for net in random_nets]
    restricted_means = [mean(net["top1"]) for net in random_nets if net.get("op_mix", {}).get("strided_skips") == 0]
    scored = searched + random_nets
    summary = {
        "random_mean": mean(random_means),
        "random_std": std(random_means),
        "random_median": statistics.median(random_means),
        "searched": [dict(standing(mean(net["top1"]), random_means), name=net["name"]) for net in searched],
        # The space without SkipConnect on stride-2 layers (--strided_skips forbid searches in it)
        "restricted_random_count": len(restricted_means),
        "searched_restricted": [dict(standing(mean(net["top1"]), restricted_means), name=net["name"])
                                for net in searched] if len(restricted_means) >= 2 else [],
        # std of the random nets' means vs the typical std of one net over seeds
        "arch_spread": std(random_means),
        "seed_spread": math.sqrt(mean([std(net["top1"]) ** 2 for net in scored])),
        "supernets": [],
    }
    for index in range(supernets):
        scores = [net["supernet_top1"][index] for net in scored]
        standalone = [mean(net["top1"]) for net in scored]
        control = max(random_nets, key=lambda net: net["supernet_top1"][index])
        summary["supernets"].append({
            "kendall_tau": kendall_tau(scores, standalone),
            "kendall_tau_95": bootstrap_interval(scores, standalone, kendall_tau),
            "control": dict(standing(mean(control["top1"]), random_means), name=control["name"]),
        })
    return summary


# ------------------------------------------------------------------- report


def print_table(nets, summary, seeds):
    supernet_columns = len(summary["supernets"])
    header = " ".join(f"{f'supernet {index + 1}':>10}" for index in range(supernet_columns))
    print(f"\n{'network':<14} {'pred. ms':>8} {header} {'skips':>5} {'s2':>3} {'early':>5} {'k':>4} {'e':>4} "
          f"{'top-1':>6} "
          f"{'std':>5}  per seed (0..{seeds - 1})")
    for net in nets:
        scores = " ".join(f"{value:>10.1f}" for value in net.get("supernet_top1", [math.nan] * supernet_columns))
        mix = net["op_mix"]
        print(f"{net['name']:<14} {net['predicted']:>8.2f} {scores} {mix['skips']:>5} {mix['strided_skips']:>3} "
              f"{mix['early_skips']:>5} {mix['kernel']:>4.1f} {mix['expansion']:>4.1f} {mean(net['top1']):>6.2f} "
              f"{std(net['top1']):>5.2f}  "
              f"{', '.join(f'{value:.2f}' for value in net['top1'])}")
    random_count = sum(net["name"].startswith("random") for net in nets)
    print(f"\nrandom networks: mean {summary['random_mean']:.2f}%, std {summary['random_std']:.2f}, "
          f"median {summary['random_median']:.2f}%")
    for result in summary["searched"]:
        print(f"{result['name']}: rank {result['rank']} of {random_count + 1}, percentile {result['percentile']:.0f}% "
              f"(share of random nets below it), z = {result['z']:+.2f}")
    for result in summary["searched_restricted"]:
        print(f"{result['name']} among the {summary['restricted_random_count']} random nets with no skip on a "
              f"stride-2 layer: rank {result['rank']} of {summary['restricted_random_count'] + 1}, percentile "
              f"{result['percentile']:.0f}%, z = {result['z']:+.2f}")
    print(f"spread across architectures {summary['arch_spread']:.2f} points (std of the random nets' means) vs "
          f"across seeds {summary['seed_spread']:.2f} points (one net's std over seeds, pooled): ratio "
          f"{summary['arch_spread'] / summary['seed_spread'] if summary['seed_spread'] else math.inf:.2f}")
    for index, result in enumerate(summary["supernets"]):
        low, high = result["kendall_tau_95"]
        control = result["control"]
        print(f"supernet {index + 1}: Kendall tau (supernet vs standalone) {result['kendall_tau']:+.2f}, "
              f"95% bootstrap [{low:+.2f}, {high:+.2f}]; control, the random net it scores best: "
              f"{control['name']}, percentile {control['percentile']:.0f}%, z = {control['z']:+.2f}")


def plot(nets, target, path):
    figure, axes = utils.new_figure((6.5, 4.5))
    styles = {"searched": ("*", 14, "tab:red"), "random": ("o", 6, "tab:gray"), "reference": ("s", 8, "tab:blue")}
    labelled = set()
    for net in nets:
        kind = net["kind"]
        marker, size, colour = styles[kind]
        label = {"searched": "searched", "random": "random, +-1% of T", "reference": net["name"]}[kind]
        axes.errorbar(net["predicted"], mean(net["top1"]), yerr=std(net["top1"]), fmt=marker, markersize=size,
                      color=colour, capsize=3, label=None if kind in labelled else label)
        labelled.add(kind)
    axes.axvline(target, color="black", linewidth=0.8, linestyle=":")
    axes.set_xlabel("predicted latency, Jetson AGX Xavier table (ms)")
    axes.set_ylabel("retrained val top-1 (%), mean +- std over seeds")
    axes.set_title(f"searched vs random networks at T = {target:g} ms")
    axes.legend()
    utils.save_figure(figure, path)


# ---------------------------------------------------------------------- run


def build_nets(args, searches, candidates):
    """The searched, random and reference networks; the random ones carry
    their results already when they come from --truth."""
    predictor = latency_predictor.load_predictor()
    nets = [{"name": f"searched {index + 1}", "kind": "searched", "arch_config": result["arch_config"],
             "predicted": result["predicted"], "search_seed": result.get("search", {}).get("seed")}
            for index, (result, _) in enumerate(searches)]
    if args.truth_data is not None:
        nets += [{"name": net["name"], "kind": "random", "arch_config": net["arch_config"],
                  "predicted": net["predicted"], "top1": list(net["top1"])} for net in args.truth_data["networks"]]
    else:
        nets += [{"name": f"random {index + 1}", "kind": "random", "arch_config": arch_config, "predicted": cost}
                 for index, (arch_config, cost) in enumerate(candidates)]
    if args.reference:
        nets.append({"name": args.reference, "kind": "reference", "arch_config": list(args.reference_arch),
                     "predicted": predictor.cost(args.reference_arch)})
    for net in nets:
        net["op_mix"] = op_mix(net["arch_config"])
    return nets


def run_plan(args):
    """What decides the kept searches and retrainings: the variant's options
    and the scale (a toy search is no full-size one)."""
    return {"search_arguments": args.search_arguments, "scale": args.scale.name}


def main(args):
    check_args(args)
    with utils.tool_folder(args.out, "benchmarks/search_quality.py"):  # left empty by a failure, it is removed
        utils.check_run_plan(args.out, run_plan(args), "benchmarks/search_quality.py")
        retraining.stop_children_on_sigterm()
        utils.continued_by_rerun()
        started = time.time()
        searches = run_searches(args)
        if args.truth_data is None:
            candidates, draws = random_architectures(args.random_nets, args.target, args.sample_seed)
            print(f"{len(candidates)} random architectures within 1% of {args.target:g} ms ({draws} draws)", flush=True)
        else:
            candidates, draws = [], args.truth_data["draws"]
            print(f"{args.random_nets} random architectures and their results from {args.truth}", flush=True)
        nets = build_nets(args, searches, candidates)

        print("scoring every network with each search's supernet ...", flush=True)
        for net in nets:
            net["supernet_top1"] = []
        for _, folder in searches:
            for net, score in zip(nets, supernet_scores(folder, [net["arch_config"] for net in nets],
                                                        args.scale.retrain_dataset)):
                net["supernet_top1"].append(score)

        retrain_all([net for net in nets if "top1" not in net], args)
        searched = [net for net in nets if net["kind"] == "searched"]
        random_nets = [net for net in nets if net["kind"] == "random"]
        summary = summarize(searched, random_nets, len(searches))
        print_table(nets, summary, args.seeds)
        report = {
            "target": args.target,
            "networks": [{key: value for key, value in net.items()} for net in nets],
            "summary": summary,
            "retrain": dict(retraining.SHORT_RECIPE, **retrain_recipe(args), seeds=args.seeds,
                            dataset=args.scale.retrain_dataset),
            "searches": [result.get("search", {}) for result, _ in searches],
            "search_arguments": args.search_arguments,
            "random_draws": draws,
            "truth": None if args.truth is None else {"path": args.truth, "device": args.truth_data["device"],
                                                       "code": args.truth_data["code"], "date": args.truth_data["date"]},
            "device": ground_truth.describe_device(),
            "seconds": time.time() - started,
        }
        utils.write_json(os.path.join(args.out, "search_quality.json"), report)
        plot(nets, args.target, os.path.join(args.out, "search_quality.png"))
        print(f"\nwritten: {os.path.join(args.out, 'search_quality.json')} and search_quality.png "
              f"({(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())

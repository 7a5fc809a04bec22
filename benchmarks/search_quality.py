"""Is the searched network better than random networks of the same latency?

The question a NAS method must answer (Yu et al., "Evaluating the Search
Phase of Neural Architecture Search", ICLR 2020, found several one-shot
methods that do not beat random sampling). For one target T on the Jetson
table this script

1. runs the demo search (`search_imagenet.py`, no --dataset: the synthetic
   10-class set at 32 px) for T;
2. draws architectures uniformly at random (a uniform op per layer),
   rejecting each until its predicted latency is within +-1% of T by the
   same table;
3. scores every architecture with the supernet's inherited weights (BatchNorm
   statistics recomputed for that path on training batches first, as in
   single-path one-shot NAS), on the images alpha was searched on;
4. retrains the searched network and every random one from scratch with one
   short recipe on the same data (`retraining.SHORT_RECIPE`: train_imagenet.py
   at 32 px, resize+flip augmentation), with several seeds;
5. prints and writes `search_quality.json` and `search_quality.png`: top-1
   per architecture (mean, std over seeds), the searched network's rank and
   percentile among the random ones, the spread across architectures next
   to the spread across seeds, and Kendall's tau between supernet-inherited
   and standalone accuracy.

    python3 benchmarks/search_quality.py                 # 8 random nets, 2 seeds
    python3 benchmarks/search_quality.py --quick         # 4 random nets, 2 seeds
    python3 benchmarks/search_quality.py --target 27 --random_nets 12 --seeds 3 --out sq27

Every run (search and each retraining) has its own folder under --out; a
rerun with the same settings reuses the finished ones, so an interrupted
benchmark continues where it stopped. Retrainings run --jobs at a time, each
with one thread (on a shared CPU, more threads per process only spin).
"""

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import data  # noqa: E402
import latency_predictor  # noqa: E402
import operations  # noqa: E402
import retraining  # noqa: E402
import search_imagenet  # noqa: E402
import utils  # noqa: E402
from model_search import SuperNet, one_hot_paths  # noqa: E402
from utils import UserError  # noqa: E402

LATENCY_TOLERANCE = 0.01  # random networks lie within +-1% of the target
MAX_DRAWS = 1_000_000
BN_CALIBRATION_BATCHES = 10
PRINT_LOCK = threading.Lock()  # retrainings finish on several threads


def get_args_parser():
    parser = argparse.ArgumentParser(description="Searched network vs random networks of equal predicted latency.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=24.0, help="target latency T, ms on the Jetson table")
    parser.add_argument("--random_nets", type=int, default=8, help="random architectures within +-1%% of T")
    parser.add_argument("--seeds", type=int, default=2, help="retraining seeds per architecture")
    parser.add_argument("--quick", action="store_true", help="4 random nets, 2 seeds (about a third of the time)")
    parser.add_argument("--retrain_epochs", type=int, default=retraining.SHORT_RECIPE["epochs"])
    parser.add_argument("--search_seed", type=int, default=0, help="the search's --seed")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the random architectures")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="retrainings run side by side, one thread each")
    parser.add_argument("--out", default="search-quality", help="output folder")
    return parser


def check_args(args):
    if args.quick:
        args.random_nets, args.seeds = 4, 2
    if args.random_nets < 2 or args.seeds < 1 or args.jobs < 1 or args.retrain_epochs < 1:
        raise UserError("--random_nets must be at least 2, --seeds, --jobs and --retrain_epochs at least 1")
    if not args.target > 0:
        raise UserError(f"--target must be a positive latency in ms, got {args.target}")
    check_target_reachable(args.target)


def check_target_reachable(target):
    lowest, highest = latency_predictor.load_predictor().feasible_range()
    if not lowest <= target <= highest:
        raise UserError(f"--target {target:g} ms is outside what the search space reaches on the Jetson table "
                        f"({lowest:.2f} to {highest:.2f} ms)")


# --------------------------------------------------------- search, retrain


def search(args):
    """The demo search for the target, or the one a previous run finished."""
    folder = os.path.join(args.out, "search")
    arch_path = os.path.join(folder, "arch.json")
    if not finished_search(arch_path, args):
        utils.make_output_folder(args.out)
        if os.path.exists(folder):
            raise UserError(f"{folder} holds an unfinished or different search; remove it or choose another --out")
        print(f"searching for {args.target:g} ms ...", flush=True)
        started = time.time()
        command = [sys.executable, "search_imagenet.py", "--target_latency", str(args.target),
                   "--seed", str(args.search_seed), "--save", folder]
        retraining.run_logged(command, os.path.join(args.out, "search.log"))
        print(f"  done in {time.time() - started:.0f} s", flush=True)
    with open(arch_path) as file:
        return json.load(file), folder


def finished_search(arch_path, args):
    if not os.path.isfile(arch_path):
        return False
    with open(arch_path) as file:
        result = json.load(file)
    return result.get("target") == args.target and result.get("search", {}).get("seed") == args.search_seed


def retrain(arch_config, name, seed, dataset, args):
    """Final val top-1 of one retraining (reused if already finished)."""
    folder = os.path.join(args.out, "retrain", f"{name}-seed{seed}")
    top1 = retraining.retrain(arch_config, folder, dataset, seed, args.retrain_epochs)
    with PRINT_LOCK:
        print(f"  {name} seed {seed}: final val top-1 {top1:.1f}%", flush=True)
    return top1


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


# --------------------------------------------------------- supernet scores


def load_supernet(search_folder):
    checkpoint = utils.load_checkpoint(os.path.join(search_folder, search_imagenet.CHECKPOINT_NAME), "search checkpoint")
    saved = argparse.Namespace(**checkpoint["args"])
    classifier_weights = [value for key, value in checkpoint["state_dict"].items()
                          if key.startswith("classifier.") and value.ndim == 2]
    supernet = SuperNet(classifier_weights[-1].shape[0], shortcuts=saved.eta > 0)
    supernet.load_state_dict(checkpoint["state_dict"])
    return supernet, saved


def supernet_top1(supernet, eta, arch_config, train_loader, val_loader):
    """Top-1 of one path with the supernet's shared weights, after
    recomputing BatchNorm's statistics for that path (the supernet's running
    statistics mix all paths)."""
    paths = one_hot_paths(operations.arch_to_indices(arch_config))
    for module in supernet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    supernet.train()
    with torch.no_grad():
        for batch, (images, _) in enumerate(train_loader):
            if batch == BN_CALIBRATION_BATCHES:
                break
            supernet(images, paths, eta)
        supernet.eval()
        correct = total = 0
        for images, targets in val_loader:
            correct += int((supernet(images, paths, eta).argmax(dim=1) == targets).sum())
            total += targets.numel()
    return 100.0 * correct / total


def supernet_scores(search_folder, arch_configs):
    supernet, saved = load_supernet(search_folder)
    eta = search_imagenet.eta_at(saved.epochs - 1, saved)
    eval_transform = data.build_eval_transform(saved.image_size)
    train_set = data.image_folder(saved.dataset, "train", eval_transform)
    val_set = data.image_folder(saved.dataset, "val", eval_transform)
    generator = torch.Generator().manual_seed(0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=saved.batch_size_train, shuffle=True,
                                               generator=generator)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=100)
    return [supernet_top1(supernet, eta, arch_config, train_loader, val_loader) for arch_config in arch_configs]


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


def summarize(searched, random_nets):
    """Rank, percentile, spreads and tau from the per-seed top-1 lists."""
    def mean(values):
        return statistics.fmean(values)

    def std(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    searched_mean = mean(searched["top1"])
    random_means = [mean(net["top1"]) for net in random_nets]
    everyone = [searched] + random_nets
    return {
        "searched_mean": searched_mean,
        "random_median": statistics.median(random_means),
        "rank": 1 + sum(value > searched_mean for value in random_means),
        "percentile": 100.0 * sum(value < searched_mean for value in random_means) / len(random_means),
        "arch_spread": std([mean(net["top1"]) for net in everyone]),
        "seed_spread": mean([std(net["top1"]) for net in everyone]),
        "kendall_tau": kendall_tau([net["supernet_top1"] for net in everyone], [mean(net["top1"]) for net in everyone]),
    }


def print_table(searched, random_nets, summary):
    print(f"\n{'network':<10} {'predicted ms':>12} {'supernet top-1':>15} {'top-1 mean':>11} {'std':>6}  per seed")
    rows = [("searched", searched)] + [(f"random {index + 1}", net) for index, net in enumerate(random_nets)]
    for name, net in rows:
        top1 = net["top1"]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"{name:<10} {net['predicted']:>12.2f} {net['supernet_top1']:>15.1f} {statistics.fmean(top1):>11.1f} "
              f"{spread:>6.1f}  {', '.join(f'{value:.1f}' for value in top1)}")
    print(f"\nsearched: rank {summary['rank']} of {len(random_nets) + 1}, percentile {summary['percentile']:.0f}% "
          f"(share of random nets below it); random median {summary['random_median']:.1f}%")
    print(f"spread across architectures {summary['arch_spread']:.2f} points vs across seeds "
          f"{summary['seed_spread']:.2f} points; Kendall tau (supernet vs standalone) {summary['kendall_tau']:.2f}")


def plot(searched, random_nets, target, path):
    figure, axes = utils.new_figure((6, 4.5))
    for index, net in enumerate(random_nets):
        top1 = net["top1"]
        axes.errorbar(net["predicted"], statistics.fmean(top1), yerr=statistics.stdev(top1) if len(top1) > 1 else 0,
                      fmt="o", color="tab:gray", capsize=3, label="random, +-1% of T" if index == 0 else None)
    top1 = searched["top1"]
    axes.errorbar(searched["predicted"], statistics.fmean(top1), yerr=statistics.stdev(top1) if len(top1) > 1 else 0,
                  fmt="*", markersize=14, color="tab:red", capsize=3, label="searched")
    axes.axvline(target, color="black", linewidth=0.8, linestyle=":")
    axes.set_xlabel("predicted latency, Jetson AGX Xavier table (ms)")
    axes.set_ylabel("retrained val top-1 (%), mean +- std over seeds")
    axes.set_title(f"searched vs random networks at T = {target:g} ms")
    axes.legend()
    utils.save_figure(figure, path)


# ---------------------------------------------------------------------- run


def main(args):
    check_args(args)
    retraining.stop_children_on_sigterm()
    started = time.time()
    arch_result, search_folder = search(args)
    with open(os.path.join(search_folder, "args.json")) as file:
        dataset = json.load(file)["dataset"]
    candidates, draws = random_architectures(args.random_nets, args.target, args.sample_seed)
    print(f"{len(candidates)} random architectures within 1% of {args.target:g} ms ({draws} draws)", flush=True)

    searched = {"arch_config": arch_result["arch_config"], "predicted": arch_result["predicted"]}
    random_nets = [{"arch_config": arch_config, "predicted": cost} for arch_config, cost in candidates]
    everyone = [searched] + random_nets
    print("scoring every network with the supernet's weights ...", flush=True)
    for net, score in zip(everyone, supernet_scores(search_folder, [net["arch_config"] for net in everyone])):
        net["supernet_top1"] = score

    names = ["searched"] + [f"random{index + 1}" for index in range(len(random_nets))]
    jobs = [(net, name, seed) for net, name in zip(everyone, names) for seed in range(args.seeds)]
    print(f"retraining {len(jobs)} networks ({args.retrain_epochs} epochs each, {args.jobs} at a time) ...", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: retrain(job[0]["arch_config"], job[1], job[2], dataset, args), jobs))
    for net in everyone:
        net["top1"] = []
    for (net, _, _), top1 in zip(jobs, results):
        net["top1"].append(top1)

    summary = summarize(searched, random_nets)
    print_table(searched, random_nets, summary)
    report = {
        "target": args.target,
        "searched": searched,
        "random": random_nets,
        "percentile": summary["percentile"],
        "kendall_tau": summary["kendall_tau"],
        "summary": summary,
        "retrain": dict(retraining.SHORT_RECIPE, epochs=args.retrain_epochs, seeds=args.seeds),
        "search": arch_result.get("search", {}),
        "random_draws": draws,
        "seconds": time.time() - started,
    }
    utils.write_json(os.path.join(args.out, "search_quality.json"), report)
    plot(searched, random_nets, args.target, os.path.join(args.out, "search_quality.png"))
    print(f"\nwritten: {os.path.join(args.out, 'search_quality.json')} and search_quality.png "
          f"({(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())

"""The ground truth a search is judged against: random networks of one
latency, each retrained from scratch, stored as data.

A searched network means something only next to networks of the same
latency picked without the search. Retraining them costs minutes each, but
they do not depend on the search, so they are retrained once and kept in a
file (benchmarks/ground_truth/*.json). A search variant is then judged in
minutes (benchmarks/screen.py: how well its supernet ranks these networks,
where its own pick would stand), and benchmarks/search_quality.py --truth
retrains only the searched networks beside them.

    python3 benchmarks/ground_truth.py --target 24 --nets 24 --seeds 3 --out benchmarks/ground_truth/random_24ms_cuda.json
    python3 benchmarks/ground_truth.py --target 28 --nets 16 --jobs 14 --out truth28.json   # 14 at a time (a GPU)
    python3 benchmarks/ground_truth.py --proxy composite --seeds 2 --out benchmarks/ground_truth/composite_24ms_cpu.json

The networks are drawn as search_quality.py draws them (uniform op per
layer, kept within +-1% of the target on the Jetson table, --sample_seed 0
by default), so the first 16 are that benchmark's 16. Each is retrained
with retraining.SHORT_RECIPE on retraining.RETRAIN_DATASET (--proxy
composite: that benchmark's harder set and its recipe) with --seeds
paired seeds, on the device train_imagenet.py picks (CUDA when there is
one). The file records the recipe, the dataset, the device, the torch
version and the code's commit, and a network's results are only compared
with results from the same recipe and kind of device. The file is written
after every retraining (seed 0 of every network first), so a build stopped
halfway leaves a partial file; rerun the same command to continue it, in
the same session (finished runs are also kept under --work) or a later one,
or with more --seeds to add seeds to a finished file.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import latency_predictor  # noqa: E402
import latency_timing  # noqa: E402
import operations  # noqa: E402
import retraining  # noqa: E402
import utils  # noqa: E402
from utils import UserError  # noqa: E402

TRUTH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ground_truth")
FORMAT = 1
REQUIRED_KEYS = ("format", "target", "predictor", "recipe", "dataset", "device", "seeds", "networks")


def shipped_truth_paths(target):
    """The shipped ground-truth files for `target` ms (any device), sorted."""
    prefix = f"random_{target:g}ms_"
    return sorted(os.path.join(TRUTH_DIR, name) for name in os.listdir(TRUTH_DIR)
                  if name.startswith(prefix) and name.endswith(".json"))


def network_seeds(truth, net):
    """The seeds of one network's results: its own list in a partial file
    (a build stopped before every seed ran), else the file's."""
    return net.get("seeds", truth["seeds"])


def load_truth(path, complete=False, option="--truth", judging=True):
    """A ground-truth file, checked: every network has an arch_config and one
    top-1 (a percentage) per seed it lists; with `complete`, every network has
    every seed of the file (paired comparisons need them all); `judging` (a
    search against it), at least two networks (a build being continued may
    hold one)."""
    truth = utils.read_json(path, option)
    if not isinstance(truth, dict) or type(truth.get("format")) is not int or truth["format"] != FORMAT or any(
            key not in truth for key in REQUIRED_KEYS):
        raise UserError(f"{option} {path} is not a ground-truth file of this project (made by "
                        "benchmarks/ground_truth.py)")
    if not (utils.is_finite_number(truth["target"]) and truth["target"] > 0 and seed_list(truth["seeds"])):
        raise UserError(f"{option} {path}: its target or seeds are not a number of ms and a list of distinct seeds; "
                        "the file was edited or damaged")
    if not isinstance(truth["networks"], list) or not all(isinstance(net, dict) for net in truth["networks"]):
        raise UserError(f"{option} {path}: its networks are not a list of records; the file was edited or damaged")
    if judging and len(truth["networks"]) < 2:
        raise UserError(f"{option} {path} holds fewer than 2 networks: no ranking to judge a search by; build a "
                        "ground truth of several with benchmarks/ground_truth.py")
    for net in truth["networks"]:
        seeds = network_seeds(truth, net)
        top1 = net.get("top1")
        if not (seed_list(seeds) and isinstance(top1, list) and len(top1) == len(seeds)
                and net.get("arch_config")):
            raise UserError(f"{option} {path}: network {net.get('name')} lacks its arch_config, its seeds (whole "
                            "numbers) or a top-1 per seed")
        why = searchable_network_fault(net["arch_config"])
        if why:
            raise UserError(f"{option} {path}: network {net.get('name')}'s arch_config is not a network of the "
                            f"search space ({why}); the file was edited or damaged")
        if not all(utils.is_finite_number(top1) and 0 <= top1 <= 100 for top1 in net["top1"]):
            raise UserError(f"{option} {path}: network {net.get('name')} has a top-1 that is no percentage "
                            f"({net['top1']}); the file was edited or damaged")
        if len(set(seeds)) != len(seeds) or not set(seeds) <= set(truth["seeds"]):
            raise UserError(f"{option} {path}: network {net.get('name')} lists a seed twice or one the file does not "
                            f"({seeds} of {truth['seeds']}); the file was edited or damaged")
        if complete and seeds != truth["seeds"]:
            raise UserError(f"{option} {path} is partial ({net['name']} has seeds {seeds} of {truth['seeds']}); "
                            "paired retrainings need a complete one: finish it with benchmarks/ground_truth.py")
    check_predicted_costs(truth, path, option)
    repeated = utils.first_repeated(str(net.get("name")) for net in truth["networks"])
    if repeated is not None:
        raise UserError(f"{option} {path}: two networks are named {repeated!r}; the file was edited or damaged")
    return truth


def check_predicted_costs(truth, path, option):
    """Each network's recorded cost, where the file names the table the
    draws are made on (the default one, as this script draws): a network put
    in by hand, or edited, would be judged as one of the target's."""
    predictor = latency_predictor.load_predictor()
    if truth["predictor"] != predictor.identifier:
        return
    for net in truth["networks"]:
        cost = predictor.cost(net["arch_config"])
        if not (utils.is_finite_number(net.get("predicted")) and math.isclose(cost, net["predicted"], rel_tol=1e-9)):
            raise UserError(f"{option} {path}: network {net.get('name')} costs {cost:g} ms on {predictor.identifier}, "
                            f"not its recorded {net.get('predicted')}; the file was edited or damaged")


def seed_list(seeds):
    """Whether `seeds` is a non-empty list of seeds (integers, not booleans)."""
    return isinstance(seeds, list) and bool(seeds) and all(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds)


def searchable_network_fault(arch_config):
    """Why `arch_config` is no network of the search space (the supernet
    scores it and the retraining builds it), or None."""
    if not isinstance(arch_config, list) or not all(isinstance(name, str) for name in arch_config):
        return "not a list of op names"
    try:
        operations.arch_to_indices(arch_config)
    except ValueError as error:
        return str(error)
    return None


def pooled_truth(paths):
    """Several ground-truth files for one target as one: each network
    (matched by architecture) with every retraining of it in any file, for
    ranking networks by their mean (results from other devices or code are
    pooled as repeats; the sources are kept). One file given twice would
    count each of its retrainings twice, so it is refused."""
    utils.refuse_files_given_twice(paths, "--truth")
    truths = [load_truth(path) for path in paths]
    targets = {truth["target"] for truth in truths}
    if len(targets) != 1:
        raise UserError(f"--truth files are for different targets ({', '.join(f'{t:g}' for t in sorted(targets))} ms)")
    if any(truth["dataset"] != truths[0]["dataset"] or truth["recipe"] != truths[0]["recipe"] for truth in truths):
        raise UserError(f"--truth files {', '.join(paths)} were retrained with different recipes or datasets")
    networks = {}
    for path, truth in zip(paths, truths):
        for net in truth["networks"]:
            key = json.dumps(net["arch_config"])
            pooled = networks.setdefault(key, {"name": net["name"], "arch_config": net["arch_config"],
                                               "predicted": net["predicted"], "top1": [], "sources": []})
            pooled["top1"] += net["top1"]
            pooled["sources"] += [f"{path} ({truth['device']['type']}) seed {seed}" for seed in network_seeds(truth, net)]
    return {"target": targets.pop(), "paths": list(paths), "dataset": truths[0]["dataset"],
            "recipe": truths[0]["recipe"], "networks": list(networks.values())}


def same_recipe(truth, recipe, dataset, device_type):
    """Why results made with (recipe, dataset, device_type) cannot stand
    beside the file's, or None when they can."""
    if truth["recipe"] != recipe:
        return f"its recipe {truth['recipe']} differs from this one {recipe}"
    if truth["dataset"] != dataset:
        return f"its dataset {truth['dataset']} differs from this one {dataset}"
    if truth["device"]["type"] != device_type:
        return (f"it was retrained on {truth['device']['type']}, this run retrains on {device_type} (floating-point "
                "results and the paired seeds differ between devices)")
    return None


def code_version():
    """The commit the code came from (with "+changes" when the tree differs);
    outside a git checkout (a copy sent to another machine), the
    LIGHTNAS_CODE_VERSION variable, else "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LIGHTNAS_CODE_VERSION", "unknown")
    return commit + ("+changes" if dirty else "")


def describe_device():
    """The device train_imagenet.py retrains on here (CUDA when there is one)."""
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "torch": torch.__version__}
    return {"type": "cpu", "name": latency_timing.describe_device(torch.device("cpu"))["name"],
            "torch": torch.__version__}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Retrain random networks of one latency once; store the results.",
                                     formatter_class=utils.DefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=24.0, help="target latency, ms on the Jetson table")
    parser.add_argument("--nets", type=int, default=24, help="random architectures within +-1%% of the target")
    parser.add_argument("--seeds", type=int, default=3, help="paired retraining seeds per architecture")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the random architectures")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="retrainings side by side, one thread each")
    parser.add_argument("--work", default="ground-truth-runs", help="folder for the retraining runs")
    parser.add_argument("--proxy", choices=("patterns", "composite"), default="patterns",
                        help="the synthetic task the networks are retrained on (benchmarks/search_quality.py "
                             "--proxy): its dataset and recipe")
    parser.add_argument("--out", required=True, help="the ground-truth file to write (.json)")
    return parser


def main(args):
    import search_quality  # noqa: E402  (the draw and the op mix are that benchmark's)

    most_nets, most_seeds = retraining.MAX_NETS, retraining.MAX_SEEDS
    if not 2 <= args.nets <= most_nets or not 1 <= args.seeds <= most_seeds or args.jobs < 1:
        raise UserError(f"--nets must be in [2, {most_nets}], --seeds in [1, {most_seeds}]; --jobs at least 1")
    utils.check_seed(args.sample_seed, "--sample_seed")
    search_quality.check_target_reachable(args.target)
    utils.check_output_file(args.out, "--out")
    retraining.stop_children_on_sigterm()
    utils.continued_by_rerun()
    candidates, draws = search_quality.random_architectures(args.nets, args.target, args.sample_seed)
    nets = [{"name": f"random {index + 1}", "kind": "random", "arch_config": arch_config, "predicted": cost}
            for index, (arch_config, cost) in enumerate(candidates)]
    scale = search_quality.PROXIES[args.proxy]
    truth = new_truth(args, draws, scale)
    known = earlier_results(args.out, truth, nets) if os.path.exists(args.out) else {}
    if known:
        print(f"continuing {args.out}: {len(known)} retrainings kept from it", flush=True)
    utils.make_output_folder(args.work, "--work")  # only now: a refusal above leaves no empty folder
    settings = argparse.Namespace(out=args.work, seeds=args.seeds, jobs=args.jobs, scale=scale,
                                  retrain_epochs=truth["recipe"]["epochs"])
    started = datetime.datetime.now(datetime.timezone.utc)
    earlier_seconds = truth["seconds"]

    def save(*finished):
        truth["seconds"] = earlier_seconds + (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
        truth["networks"] = stored_networks(nets, known, args.seeds, search_quality.op_mix)
        utils.write_json(args.out, truth)

    search_quality.retrain_all(nets, settings, known, on_done=save)
    save()
    means = sorted(sum(net["top1"]) / len(net["top1"]) for net in nets)
    print(f"written: {args.out} ({len(nets)} networks, top-1 {means[0]:.2f} to {means[-1]:.2f}%, "
          f"{truth['seconds'] / 60:.1f} min)")


def new_truth(args, draws, scale):
    """The header of the ground-truth file for this build (no networks yet),
    retrained with `scale`'s recipe on its dataset."""
    return {
        "format": FORMAT,
        "what": (f"{args.nets} random architectures within +-1% of {args.target:g} ms on the Jetson table, each "
                 f"retrained from scratch with {args.seeds} paired seeds"),
        "target": args.target,
        "predictor": latency_predictor.load_predictor().identifier,
        "sample_seed": args.sample_seed,
        "draws": draws,
        "recipe": dict(retraining.SHORT_RECIPE, **scale.retrain_recipe),
        "dataset": dict(scale.retrain_dataset),
        "device": describe_device(),
        "code": code_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "seconds": 0.0,
        "seeds": list(range(args.seeds)),
        "networks": [],
    }


def earlier_results(path, truth, nets):
    """{(name, seed): top-1} from an earlier build into `path` (complete or
    stopped halfway) of the same networks, recipe, dataset and device, so
    that a build continues where it stopped, in a later session or on
    another machine of the same kind; `truth` takes over its dates, code
    versions and seconds. Anything else at `path` is refused."""
    earlier = load_truth(path, option="--out", judging=False)
    why = same_recipe(earlier, truth["recipe"], truth["dataset"], truth["device"]["type"])
    if why is None and (earlier["target"], earlier.get("sample_seed"), earlier["predictor"]) != (
            truth["target"], truth["sample_seed"], truth["predictor"]):
        why = "it holds networks of another target, draw seed or latency table"
    if why is None and earlier["device"]["name"] != truth["device"]["name"]:
        why = f"it was retrained on {earlier['device']['name']}, not on this {truth['device']['name']}"
    if why is not None:
        raise UserError(f"--out {path} exists and cannot be continued: {why}; choose another --out")
    arch_by_name = {net["name"]: net["arch_config"] for net in nets}
    known = {}
    for net in earlier["networks"]:
        if arch_by_name.get(net["name"]) != net["arch_config"]:
            raise UserError(f"--out {path}: its {net['name']} is not this draw's; choose another --out")
        for seed, top1 in zip(network_seeds(earlier, net), net["top1"]):
            if seed < len(truth["seeds"]):
                known[(net["name"], seed)] = top1
    for key in ("date", "code"):
        if earlier[key] != truth[key]:
            truth[key] = f"{earlier[key]}, {truth[key]}"
    truth["seconds"] = earlier.get("seconds") or 0.0
    return known


def stored_networks(nets, known, seeds, op_mix):
    """The networks as the file stores them: those with at least one result,
    each with its top-1 per seed; a network still missing some seeds lists
    the seeds it has (a partial file)."""
    stored = []
    for net in nets:
        done = [seed for seed in range(seeds) if (net["name"], seed) in known]
        if not done:
            continue
        entry = {key: net[key] for key in ("name", "arch_config", "predicted")}
        entry.update(top1=[known[(net["name"], seed)] for seed in done], op_mix=op_mix(net["arch_config"]))
        if len(done) < seeds:
            entry["seeds"] = done
        stored.append(entry)
    return stored


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())

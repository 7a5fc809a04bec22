"""How well latency tables predict networks they never saw, on this machine.

1. The Jetson AGX Xavier table against the authors' MLP on random
   architectures, and on the six LightNets next to the README's measurements.
2. For each runtime (PyTorch eager, ONNX Runtime), side by side in one run:
   a table built by timing every op on its own (`--method isolated`) and one
   solved from whole networks (`--method fit`), both validated on 30 random
   networks that neither build saw, timed twice in separate sessions:
   mean |error|, share within 5% and 10%, Kendall's tau of the ranking.
3. What a user measures: the same held-out networks, each timed alone in
   a fresh process of its own, as a deployed script runs it, under the
   tables' condition (DEPLOYMENT_ENV) and in a plain process: as measured,
   and with the machine's drift taken out (the reference network then timed
   in alternating calls in the same process; in a plain PyTorch process
   that pairing changes which activations pay page faults, so there the
   plain figure to trust is the next one); and, for PyTorch, one network in
   20 fresh processes of each kind, alternating: the spread and the page
   faults per call.
4. The noise floor: a few networks re-timed in many short sessions; the
   spread of their medians bounds what any table can reach here.

    python3 benchmarks/latency_tables.py            # about 30 minutes on a 2-core CPU
    python3 benchmarks/latency_tables.py --quick    # a smoke run, about a minute
"""

import argparse
import itertools
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import latency_build  # noqa: E402  (needs the repo root on sys.path)
import latency_predictor as lp  # noqa: E402
import latency_timing  # noqa: E402
import model_train  # noqa: E402
import operations  # noqa: E402
from utils import UserError, check_regular_file, progress_bar, run_cli  # noqa: E402

JETSON_ARCHS = 10000
HELD_OUT_ARCHS = 30  # issue: at least 30 held-out random networks
NOISE_SESSIONS = 10
NOISE_ROUNDS = 20
NOISE_NETWORKS = ("LightNet-20ms", "LightNet-30ms")
FRESH_WARMUP_S = 2.0  # a fresh process's warm-up, as an ordinary timing script would
SPREAD_PROCESSES = 20  # fresh processes of one network, per condition
SPREAD_NETWORK = latency_timing.REFERENCE_NETWORK
# --quick fits from five rounds: at the smallest fit one round is too noisy on a
# shared machine and the fixed part can come out below 0 (see tests/conftest.py)
QUICK = dict(jetson_archs=1000, held_out=5, isolated_repeats=2, fit_networks=lp.NUM_SEARCHABLE_LAYERS * 6 + 1,
             fit_repeats=5, validate_repeats=2, noise_sessions=2, noise_rounds=2, warmup_s=0.1, fresh_networks=1,
             fresh_warmup_s=0.1, fresh_calls=3, spread_processes=1)
FULL = dict(jetson_archs=JETSON_ARCHS, held_out=HELD_OUT_ARCHS,
            isolated_repeats=latency_build.DEFAULT_REPEATS["isolated"],
            fit_networks=latency_build.DEFAULT_FIT_NETWORKS, fit_repeats=latency_build.DEFAULT_REPEATS["fit"],
            validate_repeats=latency_build.DEFAULT_VALIDATE_REPEATS, noise_sessions=NOISE_SESSIONS,
            noise_rounds=NOISE_ROUNDS, warmup_s=latency_timing.DEFAULT_WARMUP_S, fresh_networks=HELD_OUT_ARCHS,
            fresh_warmup_s=FRESH_WARMUP_S, fresh_calls=latency_timing.ALONE_CALLS,
            spread_processes=SPREAD_PROCESSES)
# Fresh architectures: fitted tables use seed 0 (latency_build.MEASURE_SEED),
# `validate` seed 1; these held-out networks seed 2.
HELD_OUT_SEED = 2
NUM_CLASSES = model_train.IMAGENET_CLASSES  # the deployed classifier


def jetson_figures(jetson, mlp_path, num_archs):
    print(f"== Jetson AGX Xavier table ({jetson.identifier}) vs the authors' MLP ==")
    if not os.path.isfile(mlp_path):
        print(f"MLP {mlp_path} not found: skipping the comparison with it")
        mlp = None
    else:
        mlp = lp.load_predictor(mlp_path)
        indices = lp.sample_architectures(num_archs, HELD_OUT_SEED)
        summary = latency_build.error_summary(jetson.costs(indices), mlp.costs(indices))
        print(f"{num_archs} random architectures: mean |diff| {summary['mean_abs_pct']:.3f}%, "
              f"p95 {summary['p95_abs_pct']:.3f}%, max {summary['max_abs_pct']:.3f}%")
    print(f"{'network':<15} {'table ms':>9} {'MLP ms':>8} {'README ms':>10}")
    for name, readme_ms in model_train.README_LATENCY_MS.items():
        arch_config = model_train.LIGHTNETS[name]
        mlp_ms = f"{mlp.cost(arch_config):8.2f}" if mlp else f"{'-':>8}"
        print(f"{name:<15} {jetson.cost(arch_config):9.2f} {mlp_ms} {readme_ms:10.1f}")


def build_both(protocol, sizes):
    """An isolated and a fitted table with the same protocol; (tables, seconds)."""
    tables, seconds = {}, {}
    for method, repeats in (("isolated", sizes["isolated_repeats"]), ("fit", sizes["fit_repeats"])):
        started = time.perf_counter()
        tables[method] = latency_build.build_latency_table(protocol._replace(repeats=repeats), NUM_CLASSES,
                                                           method, sizes["fit_networks"])
        seconds[method] = time.perf_counter() - started
    return tables, seconds


def held_out_sessions(protocol, sizes):
    """The held-out networks timed twice, in separate sessions (different
    orders), each on its own reference level."""
    indices = lp.sample_architectures(sizes["held_out"], HELD_OUT_SEED)
    arch_configs = [operations.indices_to_arch(row) for row in indices]
    sessions = [latency_timing.time_networks(arch_configs, protocol._replace(
        repeats=sizes["validate_repeats"], seed=HELD_OUT_SEED + 100 * session), NUM_CLASSES) for session in range(2)]
    return indices, sessions


def medians(sessions, level=None):
    return np.array([entry["value"] for entry in latency_timing.session_statistics(sessions, level)])


def report_runtime(runtime, tables, seconds, indices, sessions):
    print(f"\n== {runtime}: two tables, {len(indices)} held-out random networks ==")
    for method, table in tables.items():
        noise = table["metadata"]["noise"]
        print(f"{method:>8}: built in {seconds[method]:.0f} s; reference {noise['reference_median_ms']:.2f} ms, "
              f"jitter {noise['reference_jitter_pct']:.1f}%, drift {noise['reference_drift_pct']:.1f}%")
    first, second = medians(sessions[0]), medians(sessions[1])
    repeat = latency_build.error_summary(second, first)
    print(f"the held-out networks timed twice: session 2 vs session 1 mean |diff| {repeat['mean_abs_pct']:.2f}%, "
          f"max {repeat['max_abs_pct']:.2f}%, Kendall tau {repeat['kendall_tau']:.3f}")
    for method, table in tables.items():
        predictor = lp.TablePredictor(table, method)
        predicted = predictor.costs(indices)
        level = latency_build.table_reference_level(table["metadata"])
        for label, measured in (("session 1", first), ("session 2", second),
                                ("both, at the table's reference level",
                                 (medians(sessions[0], level) + medians(sessions[1], level)) / 2)):
            summary = latency_build.error_summary(predicted, measured)
            print(f"  {method:>8} vs {label:<31} {latency_build.format_summary(summary)}")


def fresh_process_figures(tables, indices, protocol, sizes):
    """The held-out networks, each alone in a fresh process under each
    condition (the two processes of a network one after the other, so drift
    hits both alike): each table's error as measured, and with drift taken
    out at the table's reference level."""
    indices = indices[:sizes["fresh_networks"]]
    protocol = protocol._replace(warmup_s=sizes["fresh_warmup_s"], seed=HELD_OUT_SEED)
    print(f"the same networks, each alone in a fresh process ({sizes['fresh_warmup_s']:g} s warm-up, median of "
          f"{sizes['fresh_calls']} calls); deployment: {latency_timing.deployment_line(protocol.threads)}")
    fresh = {condition: [] for condition in latency_timing.CONDITIONS}
    for row in progress_bar(indices, desc="fresh processes", unit="network"):
        for condition, results in fresh.items():
            results.append(latency_timing.time_in_fresh_process(operations.indices_to_arch(row), protocol,
                                                                NUM_CLASSES, condition, sizes["fresh_calls"],
                                                                with_reference=True))
    for condition, results in fresh.items():
        faults = [result["page_faults_per_call"] for result in results]
        print(f"  {condition}: page faults per call median {np.median(faults):.0f} (range {min(faults):.0f}-"
              f"{max(faults):.0f})")
    for method, table in tables.items():
        predicted = lp.TablePredictor(table, method).costs(indices)
        level = latency_build.table_reference_level(table["metadata"])
        for condition, drift_removed in itertools.product(latency_timing.CONDITIONS, (False, True)):
            measured = (latency_timing.at_reference_level(fresh[condition], level) if drift_removed
                        else [result["value"] for result in fresh[condition]])
            label = f"{condition}, {'drift removed' if drift_removed else 'as measured'}"
            summary = latency_build.error_summary(predicted, measured)
            print(f"  {method:>8} vs {label:<31} {latency_build.format_summary(summary)}")


def one_network_spread(protocol, sizes):
    """One network alone in many fresh processes of each kind, alternating:
    the distribution of its medians and its page faults per call."""
    protocol = protocol._replace(warmup_s=sizes["fresh_warmup_s"], seed=HELD_OUT_SEED)
    arch_config = model_train.LIGHTNETS[SPREAD_NETWORK]
    results = {condition: [] for condition in latency_timing.CONDITIONS}
    for _ in range(sizes["spread_processes"]):
        for condition in latency_timing.CONDITIONS:
            results[condition].append(latency_timing.time_in_fresh_process(arch_config, protocol, NUM_CLASSES,
                                                                           condition, sizes["fresh_calls"]))
    print(f"{SPREAD_NETWORK} alone in {sizes['spread_processes']} fresh processes of each kind (alternating), "
          "median ms over the processes (min, p10, p90, max) and page faults per call (median, range):")
    for condition, runs in results.items():
        values, faults = np.array([run["value"] for run in runs]), np.array([run["page_faults_per_call"] for run in runs])
        low, high = np.percentile(values, [10, 90])
        print(f"  {condition:<10} {np.median(values):6.2f} ms ({values.min():.2f}, {low:.2f}, {high:.2f}, "
              f"{values.max():.2f});  faults {np.median(faults):6.0f} ({faults.min():.0f}-{faults.max():.0f})")


def noise_floor(protocol, sizes):
    """Two LightNets re-timed in many short sessions: the spread of their
    session medians, raw and divided by the reference (percent of the median)."""
    arch_configs = [model_train.LIGHTNETS[name] for name in NOISE_NETWORKS]
    raw, normalized = [], []
    for session in range(sizes["noise_sessions"]):
        timed = latency_timing.measure(latency_timing.network_probes(arch_configs, NUM_CLASSES), protocol._replace(
            repeats=sizes["noise_rounds"], seed=1000 + session), desc=f"noise floor session {session + 1}")
        raw.append(np.median(timed.samples, axis=0))
        normalized.append(np.median(latency_timing.normalized_samples(timed, 1.0), axis=0))
    print(f"noise floor: {len(NOISE_NETWORKS)} networks re-timed in {sizes['noise_sessions']} sessions of "
          f"{sizes['noise_rounds']} rounds; spread of the session medians (max - min over median; std over median):")
    for column, name in enumerate(NOISE_NETWORKS):
        for label, values in (("raw", np.array(raw)[:, column]), ("reference-normalised",
                                                                   np.array(normalized)[:, column])):
            middle = np.median(values)
            print(f"  {name:<14} {label:<21} {(values.max() - values.min()) / middle * 100:6.2f}%  "
                  f"{values.std() / middle * 100:6.2f}%")


def run_runtime(runtime, sizes, threads):
    protocol = latency_timing.make_protocol("cpu", 1, threads, latency_timing.DEFAULT_CLOCK, sizes["warmup_s"], 1,
                                            latency_build.MEASURE_SEED, runtime)
    tables, seconds = build_both(protocol, sizes)
    indices, sessions = held_out_sessions(protocol, sizes)
    report_runtime(runtime, tables, seconds, indices, sessions)
    fresh_process_figures(tables, indices, protocol, sizes)
    if runtime == "torch":
        one_network_spread(protocol, sizes)
    noise_floor(protocol, sizes)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Latency tables: isolated ops vs whole-network fit, held out.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--runtimes", nargs="+", choices=latency_timing.RUNTIMES, default=list(latency_timing.RUNTIMES),
                        help="runtimes to build and validate tables for (default: all)")
    parser.add_argument("--threads", type=int, default=latency_timing.DEFAULT_CPU_THREADS,
                        help=f"intra-op threads (default: {latency_timing.DEFAULT_CPU_THREADS})")
    parser.add_argument("--mlp", default=None,
                        help="the authors' latency MLP (default: the one in ../shared/data; the comparison is "
                             "skipped when it is not there)")
    return parser


def main(args):
    sizes = QUICK if args.quick else FULL
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    started = time.perf_counter()
    if args.mlp is not None:  # one named on purpose must be there
        check_regular_file(args.mlp, "--mlp")
    jetson_figures(lp.load_predictor(lp.DEFAULT_LUT), args.mlp or lp.AUTHORS_MLP, sizes["jetson_archs"])
    print(f"\nmachine: {latency_timing.describe_device(latency_timing.torch.device('cpu'))['name']}, "
          f"{os.cpu_count()} logical CPUs, batch 1, {args.threads} thread(s), 1-min load average "
          f"{latency_timing.load_average()}")
    for runtime in args.runtimes:
        run_runtime(runtime, sizes, args.threads)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    run_cli(main, get_args_parser())

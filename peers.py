"""The six LightNets timed beside the networks users would pick instead:
torchvision's MobileNetV2, MobileNetV3-Large, MnasNet1.0, EfficientNet-B0
and ShuffleNetV2 (x1.5, x2.0), on this machine, with the table builder's
protocol (interleaved rounds, reference network, median), in PyTorch eager
and ONNX Runtime.

Architectures only: nothing is downloaded. ImageNet top-1 comes from where
each network was published: the LightNets' from the LightNAS paper (Table 1,
the authors' README); the peers' from the metadata torchvision ships with
their IMAGENET1K_V1 weights (`acc@1`), read without fetching the weights.

    python3 peers.py --out runs/peers                # about 2 minutes on a 2-core CPU
"""

import argparse
import os

import torch
import torchvision

import latency_timing
import model_train
from latency_predictor import Probe
from operations import INPUT_SIZE
from utils import UserError, new_figure, run_cli, save_figure, tool_folder, write_csv

PEERS = {  # torchvision builder name: label
    "mobilenet_v2": "MobileNetV2", "mobilenet_v3_large": "MobileNetV3-Large", "mnasnet1_0": "MnasNet1.0",
    "efficientnet_b0": "EfficientNet-B0", "shufflenet_v2_x1_5": "ShuffleNetV2 x1.5",
    "shufflenet_v2_x2_0": "ShuffleNetV2 x2.0",
}
PEER_WEIGHTS = "IMAGENET1K_V1"
LIGHTNET_SOURCE = "LightNAS paper, Table 1 (authors' README)"
DEFAULT_ROUNDS = 30
PEER_SEED = 0
COLUMNS = ["network", "family", "top1", "top1_source", "params_m"] + \
    [f"{runtime}_ms" for runtime in latency_timing.RUNTIMES]


def peer_top1(builder):
    """ImageNet top-1 (%) and params of torchvision's published weights,
    from the metadata that ships with torchvision (no download)."""
    weights = torchvision.models.get_model_weights(builder)[PEER_WEIGHTS]
    return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], weights.meta["num_params"]


def networks():
    """(label, family, module, top-1, source of the top-1, params) for every
    network compared, LightNets first."""
    rows = []
    for name, (top1, _) in model_train.README_ACCURACY.items():
        module = model_train.LightNet(model_train.LIGHTNETS[name])
        params = sum(parameter.numel() for parameter in module.parameters())
        rows.append((name, "LightNet", module, top1, LIGHTNET_SOURCE, params))
    for builder, label in PEERS.items():
        top1, params = peer_top1(builder)
        module = torchvision.models.get_model(builder, weights=None)
        rows.append((label, "peer", module, top1, f"torchvision {builder} {PEER_WEIGHTS} metadata (acc@1)", params))
    return rows


def time_all(rows, protocol):
    """Median latency (ms) of every network with `protocol`."""
    probes = [Probe((label,), module, (3, INPUT_SIZE, INPUT_SIZE)) for label, _, module, *_ in rows]
    timings = latency_timing.measure(probes, protocol, desc=f"peers ({protocol.runtime})")
    return [entry["value"] for entry in latency_timing.session_statistics([timings])]


def available_runtimes():
    try:
        latency_timing.import_onnxruntime()
    except UserError:
        return ["torch"]
    return list(latency_timing.RUNTIMES)


def compare(rounds, threads=latency_timing.DEFAULT_CPU_THREADS, warmup_s=latency_timing.DEFAULT_WARMUP_S,
            runtimes=None):
    """One dict per network: top-1, its source, params and ms per runtime."""
    rows = networks()
    results = [{"network": label, "family": family, "top1": top1, "top1_source": source,
                "params_m": round(params / 1e6, 3)} for label, family, _, top1, source, params in rows]
    for runtime in runtimes or available_runtimes():
        protocol = latency_timing.make_protocol("cpu", 1, threads, latency_timing.DEFAULT_CLOCK, warmup_s, rounds,
                                                PEER_SEED, runtime)
        for result, milliseconds in zip(results, time_all(rows, protocol)):
            result[f"{runtime}_ms"] = round(milliseconds, 3)
    return results


def print_table(results):
    runtimes = [runtime for runtime in latency_timing.RUNTIMES if f"{runtime}_ms" in results[0]]
    print(f"{'network':<19} {'top-1 %':>7} {'params M':>8} " + " ".join(f"{runtime + ' ms':>15}" for runtime in runtimes))
    for result in results:
        print(f"{result['network']:<19} {result['top1']:7.2f} {result['params_m']:8.2f} "
              + " ".join(f"{result[runtime + '_ms']:15.2f}" for runtime in runtimes))


def write_results(results, folder, machine):
    """peers.csv and peers.png in `folder`; returns their paths."""
    csv_path = os.path.join(folder, "peers.csv")
    write_csv(csv_path, COLUMNS, [[result.get(column, "") for column in COLUMNS] for result in results])
    png_path = os.path.join(folder, "peers.png")
    plot(results, machine, png_path)
    return csv_path, png_path


def plot(results, machine, path):
    runtimes = [runtime for runtime in latency_timing.RUNTIMES if f"{runtime}_ms" in results[0]]
    figure, axes_grid = new_figure((6 * len(runtimes), 4.5), columns=len(runtimes), squeeze=False)
    for axes, runtime in zip(axes_grid[0], runtimes):
        for family, marker in (("LightNet", "o"), ("peer", "s")):
            chosen = [result for result in results if result["family"] == family]
            axes.scatter([result[f"{runtime}_ms"] for result in chosen], [result["top1"] for result in chosen],
                         marker=marker, label="LightNets (paper's top-1)" if family == "LightNet"
                         else "torchvision (published top-1)")
            for result in chosen:
                axes.annotate(result["network"].replace("LightNet-", ""), (result[f"{runtime}_ms"], result["top1"]),
                              fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes.set(xlabel=f"latency on this machine, {runtime} (ms)", ylabel="ImageNet top-1 (%)",
                 title=f"{machine}, batch 1, {runtime}")
        axes.legend(fontsize=8)
    save_figure(figure, path)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Time the LightNets beside torchvision's mobile networks.")
    parser.add_argument("--out", required=True, help="folder for peers.csv and peers.png")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"timed rounds (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--threads", type=int, default=latency_timing.DEFAULT_CPU_THREADS,
                        help=f"intra-op threads (default: {latency_timing.DEFAULT_CPU_THREADS})")
    parser.add_argument("--runtimes", nargs="+", choices=latency_timing.RUNTIMES, default=None,
                        help="runtimes to time with (default: PyTorch eager, and ONNX Runtime when installed)")
    return parser


def main(args):
    if not 1 <= args.rounds <= latency_timing.MAX_REPEATS:
        raise UserError(f"--rounds must be in [1, {latency_timing.MAX_REPEATS:,}]")
    if not 1 <= args.threads <= latency_timing.MAX_THREADS:
        raise UserError(f"--threads must be in [1, {latency_timing.MAX_THREADS:,}]")
    for runtime in args.runtimes or []:
        latency_timing.make_protocol("cpu", 1, args.threads, latency_timing.DEFAULT_CLOCK, 0.0, 1, 0, runtime)
    with tool_folder(args.out, "peers.py"):  # left empty by a failure (a full disk, Ctrl-C), it is removed
        results = compare(args.rounds, args.threads, runtimes=args.runtimes)
        print_table(results)
        machine = latency_timing.describe_device(torch.device("cpu"))["name"]
        csv_path, png_path = write_results(results, args.out, machine)
    print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())

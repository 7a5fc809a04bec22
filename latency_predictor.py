"""Per-op cost lookup tables and the differentiable cost predictors of the
LightNAS search (the paper's latency model LAT(alpha), Section 3).

A table (JSON, one file per device and metric, in `latency_lut/`) holds the
cost of the fixed part of the network (stem, layer 0, head, classifier) and of
every (searchable layer, op) pair. A network's predicted cost is the fixed
part plus one entry per layer, so it is exact for one-hot weights, linear (and
differentiable) in soft weights, and its bounds are per-layer minima and maxima.
One predictor class serves every metric: latency (ms) and energy (mJ) tables
from a file, and exact FLOPs and params tables computed from the op registry.
The authors' Jetson latency MLP is offered through the same API. `build`
measures latency; an energy table has the same format and keys (`entry_key`),
with entries from a power meter and metric "energy", unit "mJ".

    python3 latency_predictor.py predict --arch_config LightNet-24ms --verbose
    python3 latency_predictor.py from-mlp --mlp ../shared/data/lightnas_jetson_latency_mlp.pth.tar \\
        --out latency_lut/jetson_agx_xavier_b8.json
    python3 latency_predictor.py build --device cpu --batch_size 1 --threads 1 --clock thread \\
        --out latency_lut/my_cpu.json
    python3 latency_predictor.py validate --lut latency_lut/my_cpu.json --device cpu --num_archs 30
    python3 latency_predictor.py calibrate --lut latency_lut/my_cpu.json \\
        --measurements runs/validate-my_cpu/validate.csv

The search calls `load_predictor(spec)` and then `cost`, `expected_cost` and
`feasible_range`.
"""

import argparse
import contextlib
import copy
import csv
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import model_train
import operations
from operations import (FIXED_FIRST_OP, HEAD_CHANNELS, INPUT_SIZE, LAYOUT, NUM_LAYERS, NUM_OPS,
                        NUM_SEARCHABLE_LAYERS, SEARCHABLE_OPS, SKIP, STEM_CHANNELS, LayerSpec)
from utils import UserError, load_checkpoint, resolve_device, run_cli, write_csv, write_json

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
LUT_DIR = os.path.join(REPO_ROOT, "latency_lut")
# The search's default: the Jetson AGX Xavier (batch 8) table derived from the
# authors' MLP, i.e. the device the published LightNets were searched for.
DEFAULT_LUT = os.path.join(LUT_DIR, "jetson_agx_xavier_b8.json")
# The shipped, calibrated CPU table (1 thread, batch 1), and the authors'
# released latency MLP, read from ../shared/data beside the checkout.
CPU_LUT = os.path.join(LUT_DIR, "cpu_amd_epyc_b1_t1.json")
AUTHORS_MLP = os.path.join(REPO_ROOT, "..", "shared", "data", "lightnas_jetson_latency_mlp.pth.tar")

TABLE_FORMAT = "lightnas-cost-table"
TABLE_FORMAT_VERSION = 1

# Each metric has exactly one unit. "flops" counts millions of
# multiply-accumulates as thop counts them, which is what LightNAS, the README
# and model_train.count_params_and_flops call FLOPs; "params" is millions of
# parameters.
METRIC_UNITS = {"latency": "ms", "energy": "mJ", "flops": "M", "params": "M"}
COUNT_METRICS = ("flops", "params")
COUNT_DEVICE = "meta"  # FLOPs/params need shapes only
MLP_PREFIX = "mlp:"

# Metadata every table carries; loading refuses a table without one of them.
REQUIRED_METADATA = ("metric", "unit", "device", "runtime", "batch_size", "input_size", "num_classes",
                     "threads", "dtype", "protocol", "date", "search_space_hash", "source")

VALUE_DECIMALS = 6  # 1 ns for ms tables; exact for counts stored in millions
SUM_TOLERANCE = 1e-4  # fixed components must add up to the fixed value (rounding slack)

# Authors' measurement set-up (their README and release).
JETSON_BATCH_SIZE = 8
JETSON_PROTOCOL = "per network: 5 warm-up runs, 6 timed runs, mean of the fastest two thirds (authors)"
# The authors' MLP: one-hot of layers 1..21 (147) -> 128 -> 64 -> 1, ReLU.
MLP_HIDDEN = (128, 64)

# Additive fit of the MLP (the authors measured 15,000 / 5,000 networks the same way).
FIT_TRAIN_ARCHS = 15000
FIT_HOLDOUT_ARCHS = 5000
FIT_SEED = 0

# Measurement protocol defaults (build and validate share them).
DEFAULT_CPU_THREADS = 1  # one intra-op thread: batch-1 blocks barely scale and a shared 2-core box stays quiet
DEFAULT_WARMUP_S = 3.0  # time-based: caches, allocator and CPU clocks settle before timing
DEFAULT_BUILD_REPEATS = 1000  # rounds over every module: 2-3 minutes for a full CPU table at 1 thread
DEFAULT_VALIDATE_ARCHS = 30
DEFAULT_VALIDATE_REPEATS = 60  # rounds over the networks being validated
VALIDATE_CHUNK = 32  # networks held in memory at once (about 30 MB each)
SPREAD_PERCENTILES = (10, 90)  # per-entry spread recorded next to the median
SPREAD_NAMES = tuple(f"p{percentile}" for percentile in SPREAD_PERCENTILES)
MEASURE_SEED = 0
VALIDATE_SEED = 1  # not the fit/build seed, so validation sees fresh architectures
# CPU clocks. "thread" is the CPU time of the calling thread: with one
# intra-op thread the forward runs on that thread alone, so on an idle core it
# equals the wall-clock latency, and on a shared machine the time the thread
# spends preempted by other processes is left out (preemption inflates long
# calls more than short ones, which would bias whole networks against ops).
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
DEFAULT_CLOCK = "wall"

ERROR_THRESHOLDS_PCT = (5, 10)  # "share within 5% / 10%" in validation summaries
SUMMARY_DECIMALS = 4  # error summaries stored in table metadata
MIN_CALIBRATION_ARCHS = 5  # a scale and an offset from fewer points would fit noise


# ------------------------------------------------------------- table keys


def entry_key(position, op_name, spec):
    """The canonical key of a table entry, used by every builder and loader.

    `position` is a layer index or the name of a fixed component; the key also
    spells out the op and its shape, so a table for another layout cannot be
    read as this one.
    """
    where = f"layer{position:02d}" if isinstance(position, int) else position
    return (f"{where}:{op_name}:{spec.in_channels}->{spec.out_channels}:"
            f"s{spec.stride}:{spec.input_size}x{spec.input_size}")


def fixed_specs(num_classes):
    """The parts every network has: (position, name, shape)."""
    last = LAYOUT[-1]
    return (
        ("stem", "ConvK3", LayerSpec(3, STEM_CHANNELS, 2, INPUT_SIZE)),
        (0, FIXED_FIRST_OP, LAYOUT[0]),
        ("head", "ConvK1+Pool", LayerSpec(last.out_channels, HEAD_CHANNELS, 1, last.input_size)),
        ("classifier", "Classifier", LayerSpec(HEAD_CHANNELS, num_classes, 1, 1)),
    )


def fixed_keys(num_classes):
    return [entry_key(*item) for item in fixed_specs(num_classes)]


def layer_keys():
    """21 rows (layers 1..21) of 7 keys (SEARCHABLE_OPS order)."""
    return [[entry_key(layer, name, LAYOUT[layer]) for name in SEARCHABLE_OPS]
            for layer in range(1, NUM_LAYERS)]


# ---------------------------------------------------------- architectures


def sample_architectures(count, seed):
    """`count` random architectures as op indices (count x 21): a uniform op
    per layer from a seeded numpy Generator."""
    return np.random.default_rng(seed).integers(0, NUM_OPS, size=(count, NUM_SEARCHABLE_LAYERS))


def one_hot(indices):
    """Op indices (... x 21) as one-hot encodings (... x 21 x 7), float32."""
    indices = np.asarray(indices)
    encoding = np.zeros(indices.shape + (NUM_OPS,), dtype=np.float32)
    np.put_along_axis(encoding, indices[..., None], 1.0, axis=-1)
    return encoding


def arch_indices(arch_config):
    """The 21 op indices of an arch_config (22 names starting with MBK3E1,
    or the 21 searchable names); anything else is a UserError."""
    names = list(arch_config)
    if len(names) == NUM_LAYERS and names[0] != FIXED_FIRST_OP:
        raise UserError(f"arch_config: layer 0 must be {FIXED_FIRST_OP} for a cost prediction, got {names[0]!r}")
    try:
        return operations.arch_to_indices(names)
    except ValueError as error:
        raise UserError(f"arch_config: {error}") from None


def arch_to_text(indices):
    return " ".join(SEARCHABLE_OPS[int(index)] for index in indices)


def text_to_arch(text):
    return arch_indices(text.split())


# ------------------------------------------------------------ table files


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(entry, where):
    if not isinstance(entry, dict) or not _finite_number(entry.get("value")):
        raise UserError(f"{where}: needs a finite number under 'value', got {entry!r}")


def _check_entry_set(entries, expected, where):
    if not isinstance(entries, dict):
        raise UserError(f"{where}: expected an object of entries")
    missing = [key for key in expected if key not in entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{where}: missing entry {missing[0]}{more}; rebuild the table for this search space")
    extra = sorted(set(entries) - set(expected))
    if extra:
        raise UserError(f"{where}: unexpected entry {extra[0]}; the table was made for another search space")
    for key in expected:
        _check_entry(entries[key], f"{where} entry {key}")


def _check_metadata(metadata, where):
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: no 'metadata' object")
    absent = [name for name in REQUIRED_METADATA if name not in metadata]
    if absent:
        raise UserError(f"{where}: metadata lacks {', '.join(absent)}")
    metric, unit = metadata["metric"], metadata["unit"]
    if metric not in METRIC_UNITS:
        raise UserError(f"{where}: unknown metric {metric!r}; known: {', '.join(METRIC_UNITS)}")
    if unit != METRIC_UNITS[metric]:
        raise UserError(f"{where}: unit {unit!r} for metric {metric!r}; expected {METRIC_UNITS[metric]!r}")
    if metadata["search_space_hash"] != operations.search_space_hash():
        raise UserError(f"{where}: made for search space {metadata['search_space_hash']}, this code defines "
                        f"{operations.search_space_hash()}; rebuild the table")
    for name in ("batch_size", "num_classes"):
        if not isinstance(metadata[name], int) or metadata[name] < 1:
            raise UserError(f"{where}: metadata {name} must be a positive integer, got {metadata[name]!r}")
    calibration = metadata.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict) or not (
                _finite_number(calibration.get("scale")) and _finite_number(calibration.get("offset"))
                and calibration["scale"] > 0):
            raise UserError(f"{where}: calibration needs a positive 'scale' and a finite 'offset'")


def _check_fixed(fixed, num_classes, where):
    _check_entry(fixed, f"{where} 'fixed'")
    components = fixed.get("components")
    if components is None:
        return
    _check_entry_set(components, fixed_keys(num_classes), f"{where} fixed components")
    total = sum(entry["value"] for entry in components.values())
    if abs(total - fixed["value"]) > SUM_TOLERANCE * max(1.0, abs(total)):
        raise UserError(f"{where}: fixed components add up to {total:g}, not the fixed value {fixed['value']:g}")


def check_table(table, where):
    """Refuse a table that is not complete, consistent and made for this
    search space; every problem is one UserError line."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise UserError(f"{where}: not a LightNAS cost table (no \"format\": \"{TABLE_FORMAT}\")")
    if table.get("format_version") != TABLE_FORMAT_VERSION:
        raise UserError(f"{where}: format version {table.get('format_version')!r}, "
                        f"this code reads {TABLE_FORMAT_VERSION}")
    metadata = table.get("metadata")
    _check_metadata(metadata, where)
    _check_fixed(table.get("fixed"), metadata["num_classes"], where)
    _check_entry_set(table.get("entries"), [key for row in layer_keys() for key in row], where)


def load_table(path):
    """Read and check a table file."""
    where = f"table {path}"
    try:
        with open(path) as file:
            table = json.load(file)
    except FileNotFoundError:
        raise UserError(f"{where} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{where} cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not valid JSON ({error}); rebuild it") from None
    check_table(table, where)
    return table


def write_table(table, path):
    """Write a table atomically: a crash leaves the old file, never half a new one."""
    write_json(path, table, indent=1)


def _new_table(metadata, fixed, entries):
    return {"format": TABLE_FORMAT, "format_version": TABLE_FORMAT_VERSION,
            "metadata": metadata, "fixed": fixed, "entries": entries}


def _base_metadata(metric, batch_size, num_classes, threads):
    return {
        "metric": metric,
        "unit": METRIC_UNITS[metric],
        "batch_size": batch_size,
        "input_size": [3, INPUT_SIZE, INPUT_SIZE],
        "num_classes": num_classes,
        "width_mult": 1.0,
        "threads": threads,
        "dtype": "float32",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "search_space_hash": operations.search_space_hash(),
    }


def _rounded(value):
    return round(float(value), VALUE_DECIMALS)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(functools.partial(file.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------- predictors


class TablePredictor:
    """Cost = fixed part + one table entry per layer (then the table's
    calibration, if it has one: scale * cost + offset)."""

    def __init__(self, table, identifier):
        metadata = table["metadata"]
        self.metadata = metadata
        self.metric = metadata["metric"]
        self.unit = metadata["unit"]
        self.identifier = identifier
        self.fixed_cost = float(table["fixed"]["value"])
        self.fixed_components = {key: entry["value"] for key, entry in table["fixed"].get("components", {}).items()}
        entries = table["entries"]
        self.layer_costs = np.array([[entries[key]["value"] for key in row] for row in layer_keys()],
                                    dtype=np.float64)  # 21 x 7
        calibration = metadata.get("calibration") or {"scale": 1.0, "offset": 0.0}
        self.scale = float(calibration["scale"])
        self.offset = float(calibration["offset"])
        self._cost_tensors = {}

    def _calibrated(self, raw):
        return self.scale * raw + self.offset

    def raw_costs(self, indices):
        """Uncalibrated totals of op-index architectures (N x 21)."""
        indices = np.asarray(indices)
        return self.fixed_cost + self.layer_costs[np.arange(NUM_SEARCHABLE_LAYERS), indices].sum(axis=-1)

    def raw_cost(self, arch_config):
        return float(self.raw_costs(arch_indices(arch_config)))

    def cost(self, arch_config):
        return float(self._calibrated(self.raw_cost(arch_config)))

    def costs(self, indices):
        """Calibrated totals of op-index architectures (N x 21)."""
        return self._calibrated(self.raw_costs(indices))

    def expected_cost(self, weights):
        """fixed + sum(weights * entries), calibrated: a 0-dim tensor on the
        weights' device whose gradient w.r.t. weights is scale * entries."""
        _check_weights(weights)
        slot = (weights.device, weights.dtype)
        if slot not in self._cost_tensors:
            self._cost_tensors[slot] = torch.as_tensor(self.layer_costs, dtype=weights.dtype, device=weights.device)
        return self._calibrated(self.fixed_cost + (weights * self._cost_tensors[slot]).sum())

    def feasible_range(self):
        low = self.fixed_cost + self.layer_costs.min(axis=1).sum()
        high = self.fixed_cost + self.layer_costs.max(axis=1).sum()
        return float(self._calibrated(low)), float(self._calibrated(high))

    def breakdown(self, arch_config):
        """(label, what, uncalibrated cost) for the fixed part (by component
        where the table has them) and every layer."""
        rows = [("fixed", key, value) for key, value in self.fixed_components.items()]
        rows = rows or [("fixed", "stem, layer 0, head, classifier (see metadata)", self.fixed_cost)]
        for layer, index in enumerate(arch_indices(arch_config), start=1):
            rows.append((f"layer {layer}", SEARCHABLE_OPS[index], float(self.layer_costs[layer - 1, index])))
        return rows


def _check_weights(weights):
    if tuple(weights.shape) != (NUM_SEARCHABLE_LAYERS, NUM_OPS):
        raise ValueError(f"expected architecture weights of shape {NUM_SEARCHABLE_LAYERS}x{NUM_OPS}, "
                         f"got {tuple(weights.shape)}")


class LatencyMLP(nn.Module):
    """The authors' Jetson latency predictor; parameter names (`pred.0`,
    `pred.2`, `pred.4`) are those of the released state_dict."""

    def __init__(self):
        super().__init__()
        self.pred = nn.Sequential(
            nn.Linear(NUM_SEARCHABLE_LAYERS * NUM_OPS, MLP_HIDDEN[0]), nn.ReLU(),
            nn.Linear(MLP_HIDDEN[0], MLP_HIDDEN[1]), nn.ReLU(),
            nn.Linear(MLP_HIDDEN[1], 1),
        )

    def forward(self, encodings):
        return self.pred(encodings).squeeze(-1)


class MLPPredictor:
    """The authors' MLP behind the predictor API (latency in ms, Jetson AGX
    Xavier, batch 8). `expected_cost` is the MLP applied to the flattened
    weights, so it is differentiable for one-hot and soft weights alike."""

    metric = "latency"
    unit = METRIC_UNITS["latency"]

    def __init__(self, path):
        state_dict = load_checkpoint(path, what="latency MLP")
        network = LatencyMLP()
        try:
            network.load_state_dict(state_dict, strict=True)
        except (RuntimeError, TypeError, AttributeError):
            raise UserError(f"latency MLP {path}: not the authors' predictor (expected a state_dict with "
                            f"pred.0/2/4 weights of shapes 128x147, 64x128, 1x64)") from None
        self.network = network.eval().requires_grad_(False)
        self.path = path
        self.sha256 = file_sha256(path)
        self.identifier = f"mlp:{os.path.basename(path)}@{self.sha256[:12]}"
        self._networks = {(torch.device("cpu"), torch.float32): self.network}
        self._range = None

    def _network_on(self, device, dtype):
        """A copy of the MLP per device and dtype, so the search's GPU calls
        and the CPU `costs` never move one network back and forth."""
        if (device, dtype) not in self._networks:
            self._networks[device, dtype] = copy.deepcopy(self.network).to(device=device, dtype=dtype)
        return self._networks[device, dtype]

    def costs(self, indices):
        """MLP latencies (ms, float64 numpy) of op-index architectures (N x 21)."""
        encodings = torch.from_numpy(one_hot(indices).reshape(len(indices), -1))
        with torch.no_grad():
            return self.network(encodings).double().numpy()

    def cost(self, arch_config):
        return float(self.costs(np.array([arch_indices(arch_config)]))[0])

    def expected_cost(self, weights):
        _check_weights(weights)
        return self._network_on(weights.device, weights.dtype)(weights.reshape(-1))

    def feasible_range(self):
        """The MLP is not additive, so its extremes are searched for:
        start from the extremes of its additive fit, then take the best
        single-layer change while one improves (a local optimum, found
        deterministically; computed once)."""
        if self._range is None:
            architectures = sample_architectures(FIT_TRAIN_ARCHS, FIT_SEED)
            _, layer_costs = fit_additive(architectures, self.costs(architectures))
            self._range = (self._local_extreme(layer_costs.argmin(axis=1), sign=-1.0),
                           self._local_extreme(layer_costs.argmax(axis=1), sign=1.0))
        return self._range

    def _local_extreme(self, indices, sign):
        best = sign * self.costs(indices[None])[0]
        while True:
            neighbours = np.repeat(indices[None], NUM_SEARCHABLE_LAYERS * NUM_OPS, axis=0)
            layers, ops = np.divmod(np.arange(len(neighbours)), NUM_OPS)
            neighbours[np.arange(len(neighbours)), layers] = ops
            values = sign * self.costs(neighbours)
            choice = int(values.argmax())
            if values[choice] <= best:
                return float(sign * best)
            indices, best = neighbours[choice], values[choice]


def count_table(metric, num_classes=model_train.IMAGENET_CLASSES):
    """The exact FLOPs (thop multiply-accumulates) or params table, in
    millions, counted per op on the op's own module at its input shape."""
    if metric not in COUNT_METRICS:
        raise UserError(f"count tables exist for {', '.join(COUNT_METRICS)}, not {metric!r}")
    return copy.deepcopy(_count_table(metric, num_classes))


@functools.lru_cache(maxsize=None)
def _count_table(metric, num_classes):
    import thop  # only count tables need it

    probes = fixed_probes(num_classes) + layer_probes()
    counts = [_count(probe, metric) / 1e6 for probe in probes]
    entries, components = _entries_from_values(probes, [{"value": _rounded(count)} for count in counts],
                                               num_classes)
    metadata = _base_metadata(metric, batch_size=1, num_classes=num_classes, threads=None)
    metadata.update(
        device={"type": "none", "name": "any (exact count, no device)", "identified_by": "not applicable"},
        runtime={"counter": "thop" if metric == "flops" else "sum of parameter sizes",
                 "thop": getattr(thop, "__version__", "unknown"), "torch": torch.__version__},
        protocol={"description": "counted per op module at its input shape for one image; FLOPs are "
                                 "multiply-accumulates as thop counts them (LightNAS's convention)"},
        source={"kind": "computed", "from": "operations.op() and model_train.LightNet"},
    )
    fixed = {"value": _rounded(sum(entry["value"] for entry in components.values())), "components": components}
    return _new_table(metadata, fixed, entries)


def _count(probe, metric):
    if metric == "params":
        return sum(parameter.numel() for parameter in probe.module.parameters())
    # thop counts from shapes alone, so the meta device gives the same count
    # without computing anything.
    return model_train.count_macs(probe.module.eval().to(COUNT_DEVICE), probe.input_shape, COUNT_DEVICE)


def load_predictor(spec=None, metric=None):
    """The cost predictor the search uses.

    spec: None (the default Jetson table), a .json table, the authors' MLP
    (a .pth.tar path or "mlp:PATH"), or "flops" / "params" (exact, no file).
    metric: if given, the predictor's metric must be this one.
    """
    if metric is not None and metric not in METRIC_UNITS:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(METRIC_UNITS)}")
    predictor = _open_predictor(DEFAULT_LUT if spec is None else os.fspath(spec))
    if metric is not None and predictor.metric != metric:
        raise UserError(f"cost predictor {predictor.identifier} predicts {predictor.metric}, not {metric}")
    return predictor


def _open_predictor(spec):
    if spec in COUNT_METRICS:
        return TablePredictor(count_table(spec), f"{spec}@{operations.search_space_hash()}")
    if spec.startswith(MLP_PREFIX):
        return MLPPredictor(spec[len(MLP_PREFIX):])
    if spec.endswith((".pth.tar", ".pth", ".pt")):
        return MLPPredictor(spec)
    if spec.endswith(".json"):
        return table_predictor(spec)
    raise UserError(f"cost predictor {spec!r}: expected a .json table, the authors' latency MLP "
                    f"(.pth.tar or mlp:PATH), 'flops' or 'params'")


def table_predictor(path):
    table = load_table(path)
    calibrated = "+calibrated" if "calibration" in table["metadata"] else ""
    return TablePredictor(table, f"{os.path.basename(path)}@{operations.search_space_hash()}{calibrated}")


# ------------------------------------------------------- additive fitting


def fit_additive(indices, values):
    """Least squares of values ~ constant + sum over layers of cost[layer, op].

    Returns (constant, 21x7 costs) with SkipConnect anchored at 0 in every
    layer (skip_anchor_note() says why that choice is free).
    """
    free_ops = [index for index, name in enumerate(SEARCHABLE_OPS) if name != SKIP]
    encodings = one_hot(indices)[:, :, free_ops].reshape(len(indices), -1).astype(np.float64)
    design = np.hstack([np.ones((len(indices), 1)), encodings])
    solution, *_ = np.linalg.lstsq(design, np.asarray(values, dtype=np.float64), rcond=None)
    layer_costs = np.zeros((NUM_SEARCHABLE_LAYERS, NUM_OPS))
    layer_costs[:, free_ops] = solution[1:].reshape(NUM_SEARCHABLE_LAYERS, len(free_ops))
    return float(solution[0]), layer_costs


def error_summary(predicted, measured):
    """Relative errors of predictions against measurements (in percent), and R^2."""
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    errors = np.abs(predicted - measured) / measured * 100
    residual = ((predicted - measured) ** 2).sum()
    spread = ((measured - measured.mean()) ** 2).sum()
    summary = {"count": int(len(measured)), "mean_abs_pct": errors.mean(),
               "p95_abs_pct": np.percentile(errors, 95), "max_abs_pct": errors.max(),
               "r2": 1 - residual / spread if spread > 0 else float("nan")}
    for threshold in ERROR_THRESHOLDS_PCT:
        summary[f"within_{threshold}_pct"] = (errors <= threshold).mean() * 100
    return {name: value if name == "count" else round(float(value), SUMMARY_DECIMALS)
            for name, value in summary.items()}


def format_summary(summary):
    within = "  ".join(f"within {threshold}%: {summary[f'within_{threshold}_pct']:5.1f}%"
                       for threshold in ERROR_THRESHOLDS_PCT)
    return (f"mean |err| {summary['mean_abs_pct']:6.2f}%  max |err| {summary['max_abs_pct']:6.2f}%  "
            f"{within}  R^2 {summary['r2']:.4f}  (n={summary['count']})")


def derive_table_from_mlp(mlp, num_train, num_holdout, seed):
    """The additive table that reproduces the authors' MLP, with its fit
    statistics on held-out architectures and on the six LightNets."""
    architectures = sample_architectures(num_train + num_holdout, seed)
    train, holdout = architectures[:num_train], architectures[num_train:]
    constant, layer_costs = fit_additive(train, mlp.costs(train))
    table = _table_from_matrix(constant, layer_costs, _mlp_metadata(mlp))
    additive = TablePredictor(table, "fit")
    lightnets = {name: [round(mlp.cost(model_train.LIGHTNETS[name]), 4),
                        round(additive.cost(model_train.LIGHTNETS[name]), 4), published]
                 for name, published in model_train.README_LATENCY_MS.items()}
    fit = {"train_archs": num_train, "holdout_archs": num_holdout, "seed": seed,
           "holdout_vs_mlp": error_summary(additive.costs(holdout), mlp.costs(holdout)),
           "lightnets_mlp_table_published_ms": lightnets}
    table["metadata"]["fit"] = fit
    return table


def _table_from_matrix(constant, layer_costs, metadata):
    entries = {key: {"value": _rounded(layer_costs[row, column])}
               for row, keys in enumerate(layer_keys()) for column, key in enumerate(keys)}
    return _new_table(metadata, {"value": _rounded(constant)}, entries)


def skip_anchor_note():
    """Why SkipConnect is 0 ms in every layer of a table fitted to the MLP."""
    projecting = [str(layer) for layer in range(1, NUM_LAYERS)
                  if LAYOUT[layer].stride != 1 or LAYOUT[layer].in_channels != LAYOUT[layer].out_channels]
    return ("an additive fit only determines each layer's costs up to a constant, so SkipConnect is 0 ms in "
            f"every layer: exact for the {NUM_SEARCHABLE_LAYERS - len(projecting)} identity layers; in the "
            f"{len(projecting)} layers where SkipConnect is a strided or widening 1x1 conv "
            f"({', '.join(projecting)}) its cost sits in 'fixed' and the layer's other entries are relative "
            "to it. Totals are unaffected, and so is the search: a per-layer constant cancels in the softmax "
            "gradient.")


def _mlp_metadata(mlp):
    metadata = _base_metadata("latency", JETSON_BATCH_SIZE, model_train.IMAGENET_CLASSES, threads=None)
    metadata.update(
        device={"type": "jetson", "name": "NVIDIA Jetson AGX Xavier",
                "identified_by": "the LightNAS authors' release (README)"},
        runtime={"name": "PyTorch on the Jetson (authors' measurement)", "fit_with_torch": torch.__version__},
        protocol={"description": JETSON_PROTOCOL},
        source={"kind": "derived", "from": "the authors' latency MLP (additive least-squares fit)",
                "file": os.path.basename(mlp.path), "sha256": mlp.sha256, "anchor": skip_anchor_note(),
                "fixed_part": "'fixed' is the fit's constant: stem, layer 0, head, classifier and the "
                              "projecting SkipConnects; it cannot be split into components"},
    )
    return metadata


# ----------------------------------------------------------- measurement


class Probe(NamedTuple):
    """A module to time or count, its input shape (no batch dimension), and
    the table keys it stands for (layers with one shape share one probe)."""

    keys: tuple
    module: nn.Module
    input_shape: tuple


def fixed_probes(num_classes):
    """The fixed part as LightNet builds it: stem, layer 0, head (last conv +
    global pool) and classifier."""
    all_skip = operations.indices_to_arch([SEARCHABLE_OPS.index(SKIP)] * NUM_SEARCHABLE_LAYERS)
    network = model_train.LightNet(all_skip, num_classes=num_classes)
    modules = (network.first_conv, network.blocks[0], nn.Sequential(network.last_conv, network.global_pool),
               network.classifier)
    specs = [spec for _, _, spec in fixed_specs(num_classes)]
    # The classifier sees the pooled, flattened features; the rest see images.
    shapes = [(spec.in_channels, spec.input_size, spec.input_size) for spec in specs[:-1]] + [(specs[-1].in_channels,)]
    return [Probe((key,), module, shape) for key, module, shape in zip(fixed_keys(num_classes), modules, shapes)]


def layer_probes():
    """One module per distinct (op, layer shape), built by operations.op()."""
    keys_by_shape = {}
    for layer in range(1, NUM_LAYERS):
        spec = LAYOUT[layer]
        for name in SEARCHABLE_OPS:
            keys_by_shape.setdefault((name, spec), []).append(entry_key(layer, name, spec))
    probes = []
    for (name, spec), keys in keys_by_shape.items():
        module = operations.op(name, spec.in_channels, spec.out_channels, spec.stride)
        model_train.initialize_weights(module)
        probes.append(Probe(tuple(keys), module, (spec.in_channels, spec.input_size, spec.input_size)))
    return probes


def _entries_from_values(probes, values, num_classes):
    """Spread per-probe values over their keys: (layer entries, fixed components)."""
    by_key = {key: value for probe, value in zip(probes, values) for key in probe.keys}
    components = {key: by_key[key] for key in fixed_keys(num_classes)}
    entries = {key: by_key[key] for row in layer_keys() for key in row}
    return entries, components


@contextlib.contextmanager
def torch_threads(threads):
    """Run with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_model_name():
    """The CPU model and where the name came from."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip(), "/proc/cpuinfo 'model name'"
    except OSError:
        pass
    return platform.processor() or platform.machine(), "platform.processor()"


def describe_device(device):
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "identified_by": "torch.cuda.get_device_name()", "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    name, source = cpu_model_name()
    return {"type": "cpu", "name": name, "identified_by": source, "logical_cpus": os.cpu_count()}


def _runtime():
    return {"name": "PyTorch eager", "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__}


class Protocol(NamedTuple):
    """How build and validate time modules."""

    device: torch.device
    batch_size: int
    threads: int  # torch intra-op threads
    clock: str  # a CLOCKS name (CPU); CUDA always times with events
    warmup_s: float
    repeats: int
    seed: int


def make_protocol(device_name, batch_size, threads, clock, warmup_s, repeats, seed):
    """A Protocol from command-line values, refusing impossible ones."""
    device = resolve_device(device_name)
    if min(batch_size, threads, repeats) < 1 or warmup_s < 0:
        raise UserError("--batch_size, --threads and --repeats must be at least 1, --warmup_s at least 0")
    if clock not in CLOCKS:
        raise UserError(f"--clock: unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    if clock == "thread" and (device.type != "cpu" or threads != 1):
        raise UserError("--clock thread counts only the calling thread's CPU time; "
                        "use it with --device cpu --threads 1")
    return Protocol(device, batch_size, threads, clock, warmup_s, repeats, seed)


def _timed_call(module, inputs, protocol):
    """One forward, in ms: the protocol's clock on CPU; CUDA events
    bracketing the call after a synchronize on GPU (kernels run
    asynchronously)."""
    if protocol.device.type == "cuda":
        torch.cuda.synchronize(protocol.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        module(inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    clock = CLOCKS[protocol.clock]
    start = clock()
    module(inputs)
    return (clock() - start) * 1e3


def measure(probes, protocol, desc):
    """Time every probe `protocol.repeats` times; returns ms, shape
    (repeats, probes).

    Rounds are interleaved: each round calls every module once, in a fresh
    random order, so a burst of load elsewhere spreads over all entries
    instead of corrupting a few. Warm-up is time-based (whole rounds until
    `warmup_s` has passed, at least one).
    """
    generator = torch.Generator().manual_seed(protocol.seed)
    order_rng = np.random.default_rng(protocol.seed)
    modules = [probe.module.eval().to(protocol.device) for probe in probes]
    inputs = [torch.randn(protocol.batch_size, *probe.input_shape, generator=generator).to(protocol.device)
              for probe in probes]
    samples = np.empty((protocol.repeats, len(probes)))
    with torch_threads(protocol.threads), torch.no_grad():
        started = time.perf_counter()
        while True:
            for module, batch in zip(modules, inputs):
                _timed_call(module, batch, protocol)
            if time.perf_counter() - started >= protocol.warmup_s:
                break
        for round_index in tqdm(range(protocol.repeats), desc=desc, unit="round"):
            for index in order_rng.permutation(len(probes)):
                samples[round_index, index] = _timed_call(modules[index], inputs[index], protocol)
    return samples


def sample_statistics(samples):
    """Median and spread of one probe's times, as stored in a table entry."""
    spread = np.percentile(samples, SPREAD_PERCENTILES)
    statistics = {"value": _rounded(np.median(samples))}
    statistics.update((name, _rounded(value)) for name, value in zip(SPREAD_NAMES, spread))
    return statistics


def _protocol_metadata(protocol):
    if protocol.device.type == "cuda":
        timer = "CUDA events around each call, torch.cuda.synchronize() before"
    elif protocol.clock == "thread":
        timer = "time.thread_time() around each call: CPU time of the (only) computing thread"
    else:
        timer = "time.perf_counter() around each call"
    metadata = {"mode": "eval(), torch.no_grad()", "clock": protocol.clock, "timer": timer,
                "warmup_s": protocol.warmup_s, "repeats": protocol.repeats, "seed": protocol.seed,
                "order": "interleaved rounds: every round calls each module once, in a fresh random order",
                "statistic": "median", "spread": "/".join(SPREAD_NAMES) + " per entry",
                "input": "torch.randn, batch_size x C x H x W at the layer's input shape",
                "shared_shapes": "layers with the same op and shape share one measurement"}
    if protocol.device.type == "cuda":
        metadata["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return metadata


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def build_latency_table(protocol, num_classes):
    """Measure the fixed part and every (layer, op) with `protocol`."""
    probes = fixed_probes(num_classes) + layer_probes()
    load_before = _load_average()
    started = time.perf_counter()
    samples = measure(probes, protocol, desc="build")
    seconds = time.perf_counter() - started
    statistics = [sample_statistics(samples[:, index]) for index in range(len(probes))]
    entries, components = _entries_from_values(probes, statistics, num_classes)
    low_name, high_name = SPREAD_NAMES
    spreads = [(entry[high_name] - entry[low_name]) / entry["value"] * 100 for entry in statistics]
    metadata = _base_metadata("latency", protocol.batch_size, num_classes, protocol.threads)
    metadata.update(
        device=describe_device(protocol.device),
        runtime=_runtime(),
        protocol=_protocol_metadata(protocol),
        source={"kind": "measured"},
        noise={"relative_spread_pct": f"({high_name} - {low_name}) / median",
               "median_over_entries": round(float(np.median(spreads)), 2),
               "p90_over_entries": round(float(np.percentile(spreads, 90)), 2)},
        build_seconds=round(seconds, 1),
        load_average_1min={"before": load_before, "after": _load_average()},
    )
    fixed = {"value": _rounded(sum(entry["value"] for entry in components.values())), "components": components}
    return _new_table(metadata, fixed, entries)


def network_probes(arch_configs, num_classes):
    return [Probe((" ".join(arch_config),), model_train.LightNet(arch_config, num_classes=num_classes),
                  (3, INPUT_SIZE, INPUT_SIZE)) for arch_config in arch_configs]


def measure_arch_configs(arch_configs, protocol, num_classes):
    """End-to-end time of whole networks (ms), any op of the registry
    (SE included): median and spread per network, with the table builder's
    protocol."""
    statistics = []
    for start in range(0, len(arch_configs), VALIDATE_CHUNK):
        chunk = arch_configs[start:start + VALIDATE_CHUNK]
        samples = measure(network_probes(chunk, num_classes), protocol._replace(seed=protocol.seed + start),
                          desc=f"networks {start + 1}-{start + len(chunk)}")
        statistics += [sample_statistics(samples[:, index]) for index in range(len(chunk))]
    return statistics


def measure_networks(indices, protocol, num_classes):
    """measure_arch_configs for searchable-op index rows."""
    return measure_arch_configs([operations.indices_to_arch(row) for row in indices], protocol, num_classes)


# ------------------------------------------------------------ subcommands


def run_from_mlp(args):
    mlp = MLPPredictor(args.mlp)
    table = derive_table_from_mlp(mlp, args.num_train, args.num_holdout, args.seed)
    table["metadata"]["source"]["command"] = _command_line(args)
    write_table(table, args.out)
    fit = table["metadata"]["fit"]
    print(f"fitted constant + 21x7 costs to {args.num_train} random architectures; "
          f"on {args.num_holdout} held-out ones vs the MLP:")
    print("  " + format_summary(fit["holdout_vs_mlp"]))
    print(f"{'network':<15} {'MLP ms':>8} {'table ms':>9} {'published ms':>13}")
    for name, (mlp_ms, table_ms, published_ms) in fit["lightnets_mlp_table_published_ms"].items():
        print(f"{name:<15} {mlp_ms:8.2f} {table_ms:9.2f} {published_ms:13.1f}")
    print(f"wrote {args.out}")


def run_build(args):
    protocol = make_protocol(args.device, args.batch_size, args.threads, args.clock, args.warmup_s,
                             args.repeats, args.seed)
    if args.num_classes < 1:
        raise UserError("--num_classes must be at least 1")
    table = build_latency_table(protocol, args.num_classes)
    table["metadata"]["source"]["command"] = _command_line(args)
    write_table(table, args.out)
    metadata = table["metadata"]
    predictor = TablePredictor(table, os.path.basename(args.out))
    low, high = predictor.feasible_range()
    print(f"{metadata['device']['name']} ({protocol.device.type}), batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.clock} clock: "
          f"built in {metadata['build_seconds']:.0f} s; fixed part {table['fixed']['value']:.3f} ms; "
          f"range {low:.2f}-{high:.2f} ms; median entry spread {metadata['noise']['median_over_entries']:.1f}%")
    print(f"wrote {args.out}")


def run_validate(args):
    predictor = table_predictor(args.lut)
    metadata = predictor.metadata
    if predictor.metric != "latency":
        raise UserError(f"--lut {args.lut}: validate measures latency; this table predicts {predictor.metric}")
    if metadata["device"].get("type") != resolve_device(args.device).type:
        raise UserError(f"--lut {args.lut} was measured on {metadata['device'].get('name')} "
                        f"({metadata['device'].get('type')}); validate it there, not on {args.device}")
    if args.num_archs < 2:
        raise UserError("--num_archs must be at least 2")
    protocol = validation_protocol(metadata, args.device, args.threads, args.clock, args.warmup_s, args.repeats,
                                   args.seed)
    print(f"measuring {args.num_archs} random architectures end to end on {describe_device(protocol.device)['name']}: "
          f"batch {protocol.batch_size}, {protocol.threads} thread(s), {protocol.clock} clock, "
          f"{protocol.repeats} rounds (1-min load average {_load_average()})", flush=True)
    indices = sample_architectures(args.num_archs, args.seed)
    measured = measure_networks(indices, protocol, metadata["num_classes"])
    out_dir = args.out_dir or os.path.join("runs", "validate-" + os.path.splitext(os.path.basename(args.lut))[0])
    report_validation(predictor, indices, measured, out_dir)


def validation_protocol(metadata, device_name, threads, clock, warmup_s, repeats, seed):
    """The table's batch size, threads and clock unless overridden."""
    threads = threads or metadata["threads"] or DEFAULT_CPU_THREADS
    clock = clock or metadata["protocol"].get("clock", DEFAULT_CLOCK)
    return make_protocol(device_name, metadata["batch_size"], threads, clock, warmup_s, repeats, seed)


def report_validation(predictor, indices, measured, out_dir):
    """Print predicted vs measured, write validate.csv and validate.png."""
    medians = np.array([entry["value"] for entry in measured])
    raw, calibrated = predictor.raw_costs(indices), predictor.costs(indices)
    is_calibrated = "calibration" in predictor.metadata
    print(f"{'arch':>4} {'measured ms':>12} {'predicted ms':>13} {'err %':>7}"
          + (f" {'calibrated ms':>14} {'err %':>7}" if is_calibrated else ""))
    for number, (measured_ms, raw_ms, calibrated_ms) in enumerate(zip(medians, raw, calibrated)):
        row = f"{number:>4} {measured_ms:12.3f} {raw_ms:13.3f} {(raw_ms / measured_ms - 1) * 100:7.1f}"
        if is_calibrated:
            row += f" {calibrated_ms:14.3f} {(calibrated_ms / measured_ms - 1) * 100:7.1f}"
        print(row)
    print(f"table {predictor.identifier} vs end-to-end measurement:")
    print("  uncalibrated: " + format_summary(error_summary(raw, medians)))
    if is_calibrated:
        print("  calibrated:   " + format_summary(error_summary(calibrated, medians)))
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "validate.csv")
    write_csv(csv_path, ["arch", "measured_ms"] + [f"measured_{name}_ms" for name in SPREAD_NAMES]
              + ["predicted_raw_ms", "predicted_ms"],
              [[arch_to_text(row), entry["value"]] + [entry[name] for name in SPREAD_NAMES]
               + [_rounded(raw_ms), _rounded(calibrated_ms)]
               for row, entry, raw_ms, calibrated_ms in zip(indices, measured, raw, calibrated)])
    png_path = os.path.join(out_dir, "validate.png")
    plot_validation(medians, raw, calibrated if is_calibrated else None, predictor.identifier, png_path)
    print(f"wrote {csv_path} and {png_path}")


def plot_validation(measured, raw, calibrated, title, path):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5, 5))
    axes.scatter(measured, raw, s=14, label="table")
    if calibrated is not None:
        axes.scatter(measured, calibrated, s=14, marker="x", label="table, calibrated")
    values = np.concatenate([measured, raw] + ([calibrated] if calibrated is not None else []))
    limits = (values.min() * 0.95, values.max() * 1.05)
    axes.plot(limits, limits, color="gray", linewidth=1, label="predicted = measured")
    axes.set(xlim=limits, ylim=limits, xlabel="measured latency (ms)", ylabel="predicted latency (ms)", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def read_measurements(path):
    """(op indices, measured ms) from a validate.csv."""
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        indices = np.array([text_to_arch(row["arch"]) for row in rows], dtype=np.int64)
        measured = np.array([float(row["measured_ms"]) for row in rows])
    except FileNotFoundError:
        raise UserError(f"--measurements {path} not found") from None
    except (KeyError, ValueError, TypeError, AttributeError, csv.Error, UserError):
        raise UserError(f"--measurements {path}: expected the validate.csv written by `validate` "
                        f"(columns arch, measured_ms)") from None
    return indices, measured


def calibrate_table(table, indices, measured, sources):
    """Fit measured = scale * raw prediction + offset and store it in the
    table's metadata; returns the before/after summaries."""
    if len(measured) < MIN_CALIBRATION_ARCHS:
        raise UserError(f"calibration needs at least {MIN_CALIBRATION_ARCHS} measured architectures, "
                        f"got {len(measured)}")
    metadata = table["metadata"]
    raw = TablePredictor(table, "raw").raw_costs(indices)
    scale, offset = np.polyfit(raw, measured, 1)
    if not scale > 0:
        raise UserError(f"calibration: measured latency does not grow with the prediction (scale {scale:.3f}); "
                        "the measurements do not fit this table")
    before, after = error_summary(raw, measured), error_summary(scale * raw + offset, measured)
    metadata["calibration"] = {
        "model": "calibrated = scale * table total + offset", "scale": round(float(scale), 6),
        "offset": _rounded(offset), "fitted_on": list(sources), "num_measurements": int(len(measured)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "before": before, "after": after}
    return before, after


def run_calibrate(args):
    table = load_table(args.lut)
    # Several validate runs may be pooled: on a shared machine one run can
    # catch a burst of load that the others average out.
    runs = [read_measurements(path) for path in args.measurements]
    indices = np.concatenate([run_indices for run_indices, _ in runs])
    measured = np.concatenate([run_measured for _, run_measured in runs])
    before, after = calibrate_table(table, indices, measured, args.measurements)
    out = args.out or args.lut
    write_table(table, out)
    calibration = table["metadata"]["calibration"]
    print(f"calibration: {calibration['scale']:.4f} x table + {calibration['offset']:.4f} "
          f"{table['metadata']['unit']} from {len(measured)} measurements")
    print("  before: " + format_summary(before))
    print("  after:  " + format_summary(after))
    print(f"wrote {out}")


def run_predict(args):
    predictor = load_predictor(args.lut)
    arch_config = model_train.resolve_arch_config(args.arch_config)
    total = predictor.cost(arch_config)
    if args.verbose and isinstance(predictor, TablePredictor):
        for label, name, value in predictor.breakdown(arch_config):
            print(f"{label:>9}  {name:<46} {value:10.4f} {predictor.unit}")
        if predictor.scale != 1.0 or predictor.offset != 0.0:
            print(f"calibration: {predictor.scale:.4f} x {predictor.raw_cost(arch_config):.4f} "
                  f"+ {predictor.offset:.4f}")
    elif args.verbose:
        print("the MLP has no per-layer breakdown; use its additive table for one")
    print(f"{predictor.identifier}: {total:.3f} {predictor.unit} ({predictor.metric})")


# -------------------------------------------------------------------- CLI


def get_args_parser():
    parser = argparse.ArgumentParser(description="Build, check and query LightNAS cost tables.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from_mlp = commands.add_parser("from-mlp", help="derive the Jetson table from the authors' latency MLP")
    from_mlp.add_argument("--mlp", required=True, help="the authors' .pth.tar predictor")
    from_mlp.add_argument("--out", required=True, help="table to write (.json)")
    from_mlp.add_argument("--num_train", type=int, default=FIT_TRAIN_ARCHS,
                          help=f"random architectures to fit on (default: {FIT_TRAIN_ARCHS})")
    from_mlp.add_argument("--num_holdout", type=int, default=FIT_HOLDOUT_ARCHS,
                          help=f"random architectures to test the fit on (default: {FIT_HOLDOUT_ARCHS})")
    from_mlp.add_argument("--seed", type=int, default=FIT_SEED,
                          help=f"architecture sampling seed (default: {FIT_SEED})")
    from_mlp.set_defaults(handler=run_from_mlp)

    build = commands.add_parser("build", help="measure a latency table on this machine")
    build.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    build.add_argument("--batch_size", type=int, default=1, help="images per forward (default: 1)")
    build.add_argument("--threads", type=int, default=DEFAULT_CPU_THREADS,
                       help=f"torch intra-op threads (default: {DEFAULT_CPU_THREADS})")
    build.add_argument("--clock", choices=tuple(CLOCKS), default=DEFAULT_CLOCK,
                       help="CPU timer: wall (perf_counter) or thread (CPU time of the computing thread, "
                            f"immune to preemption on a shared machine; needs --threads 1) (default: {DEFAULT_CLOCK})")
    _add_measurement_args(build, DEFAULT_BUILD_REPEATS, MEASURE_SEED)
    build.add_argument("--num_classes", type=int, default=model_train.IMAGENET_CLASSES,
                       help="classifier outputs of the deployed network (default: 1000)")
    build.add_argument("--out", required=True, help="table to write (.json)")
    build.set_defaults(handler=run_build)

    validate = commands.add_parser("validate", help="compare a table with end-to-end measurements")
    validate.add_argument("--lut", required=True, help="latency table (.json)")
    validate.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    validate.add_argument("--num_archs", type=int, default=DEFAULT_VALIDATE_ARCHS,
                          help=f"random architectures to measure (default: {DEFAULT_VALIDATE_ARCHS})")
    validate.add_argument("--threads", type=int, default=None, help="torch threads (default: the table's)")
    validate.add_argument("--clock", choices=tuple(CLOCKS), default=None, help="CPU timer (default: the table's)")
    _add_measurement_args(validate, DEFAULT_VALIDATE_REPEATS, VALIDATE_SEED)
    validate.add_argument("--out_dir", default=None,
                          help="where validate.csv and validate.png go (default: runs/validate-<table name>)")
    validate.set_defaults(handler=run_validate)

    calibrate = commands.add_parser("calibrate", help="fit scale and offset from validate measurements")
    calibrate.add_argument("--lut", required=True, help="latency table (.json) to calibrate")
    calibrate.add_argument("--measurements", required=True, nargs="+",
                           help="one or more validate.csv files written by `validate`")
    calibrate.add_argument("--out", default=None, help="table to write (default: overwrite --lut)")
    calibrate.set_defaults(handler=run_calibrate)

    predict = commands.add_parser("predict", help="predict the cost of one architecture")
    predict.add_argument("--lut", default=DEFAULT_LUT,
                         help="a .json table, the MLP (.pth.tar or mlp:PATH), flops or params "
                              "(default: the Jetson AGX Xavier table)")
    predict.add_argument("--arch_config", required=True,
                         help="a registered name (e.g. LightNet-24ms), \"['MBK3E1', ...]\" or an arch.json")
    predict.add_argument("--verbose", action="store_true", help="print the per-layer breakdown")
    predict.set_defaults(handler=run_predict)
    return parser


def _add_measurement_args(parser, repeats, seed):
    parser.add_argument("--warmup_s", type=float, default=DEFAULT_WARMUP_S,
                        help=f"time-based warm-up in seconds (default: {DEFAULT_WARMUP_S})")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed rounds; each times every module once (default: {repeats})")
    parser.add_argument("--seed", type=int, default=seed, help=f"inputs, order and architectures (default: {seed})")


def _command_line(args):
    """The command that made a table, for its metadata."""
    options = [f"--{name} {value}" for name, value in vars(args).items()
               if name not in ("command", "handler", "out") and value is not None]
    return " ".join(["python3 latency_predictor.py", args.command] + options)


def main(args):
    args.handler(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser())

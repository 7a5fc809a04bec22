"""Per-op cost lookup tables and the differentiable cost predictors of the
LightNAS search (the paper's latency model LAT(alpha), Section 3).

A table (JSON, one file per device and metric, in `latency_lut/`) holds the
cost of the fixed part of the network (stem, layer 0, head, classifier) and of
every (searchable layer, op) pair. A network's predicted cost is the fixed
part plus one entry per layer, so it is exact for one-hot weights, linear (and
differentiable) in soft weights, and its bounds are per-layer minima and maxima.
One predictor class serves every metric: latency (ms) and energy (mJ) tables
from a file, and exact FLOPs and params tables computed from the op registry.
The authors' Jetson latency MLP is offered through the same API. An energy
table has the same format and keys (`entry_key`) as a latency table, with
entries from a power meter and metric "energy", unit "mJ".

This module uses tables; `latency_build.py` makes them (measuring, fitting
the authors' MLP, validating, calibrating) and holds the command line of
both (this module imports none of the builders):

    python3 latency_build.py predict --arch_config LightNet-24ms --verbose
    python3 latency_build.py from-mlp --mlp ../shared/data/lightnas_jetson_latency_mlp.pth.tar \\
        --out latency_lut/jetson_agx_xavier_b8.json
    python3 latency_build.py build --device cpu --out latency_lut/my_cpu.json
    python3 latency_build.py build --device cpu --runtime onnxruntime --out latency_lut/my_cpu_ort.json
    python3 latency_build.py validate --lut latency_lut/my_cpu.json --device cpu --num_archs 30
    python3 latency_build.py calibrate --lut latency_lut/my_cpu.json \\
        --measurements runs/validate-my_cpu/validate.csv

The search calls `load_predictor(spec)` and then `cost`, `expected_cost` and
`feasible_range`.
"""


import copy
import datetime
import functools
import hashlib
import json
import os
import shlex
import sys
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

import model_train
import operations
from operations import (FIXED_FIRST_OP, HEAD_CHANNELS, INPUT_SIZE, LAYOUT, NUM_LAYERS, NUM_OPS,
                        NUM_SEARCHABLE_LAYERS, SEARCHABLE_OPS, SKIP, STEM_CHANNELS, LayerSpec)
from utils import (MAX_BATCH_SIZE, MAX_CLASSES, USER_ERROR_EXIT_CODE, UserError, check_output_file, file_sha256,
                   is_finite_number, load_checkpoint, path_error_reason, read_json, write_json)

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
LUT_DIR = os.path.join(REPO_ROOT, "latency_lut")
# The search's default: the Jetson AGX Xavier (batch 8) table derived from the
# authors' MLP, i.e. the device the published LightNets were searched for.
DEFAULT_LUT = os.path.join(LUT_DIR, "jetson_agx_xavier_b8.json")
# The shipped CPU tables (1 thread, batch 1), one per CI machine kind; the
# AMD one is the fallback. And the authors' released latency MLP, read from
# ../shared/data beside the checkout.
CPU_LUT = os.path.join(LUT_DIR, "cpu_amd_epyc_b1_t1.json")
CPU_LUTS = (CPU_LUT, os.path.join(LUT_DIR, "cpu_intel_xeon_b1_t1.json"))
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
MAX_ENTRY = 1e6  # no op costs a million ms, mJ or M; sums of such entries stay far from overflow
# No network of 22 blocks costs less than this (a microsecond, a microjoule,
# a thousand FLOPs or parameters) on any device; a table or a measurement
# that says so holds a unit or typing error.
MIN_NETWORK_COST = 1e-3
# The network a measured latency table times once per round while it is
# built (its drift and jitter), whose median the table records.
REFERENCE_NETWORK = "LightNet-24ms"
SUM_TOLERANCE = 1e-4  # fixed components must add up to the fixed value (rounding slack)
# The authors' MLP: one-hot of layers 1..21 (147) -> 128 -> 64 -> 1, ReLU.
MLP_HIDDEN = (128, 64)

# Additive fit of the MLP (the authors measured 15,000 / 5,000 networks the same way).
FIT_TRAIN_ARCHS = 15000
FIT_HOLDOUT_ARCHS = 5000
FIT_SEED = 0


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


def _check_entry(entry, where):
    if not isinstance(entry, dict) or not is_finite_number(entry.get("value")):
        raise UserError(f"{where}: needs a finite number under 'value', got {entry!r}")
    if entry["value"] < 0:
        raise UserError(f"{where}: a cost cannot be negative ({entry['value']:g}); rebuild the table")
    if entry["value"] > MAX_ENTRY:
        raise UserError(f"{where}: {entry['value']:g} is not a plausible cost (at most {MAX_ENTRY:g}); "
                        "rebuild the table")


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
    if not isinstance(metric, str) or not isinstance(unit, str):
        raise UserError(f"{where}: metadata metric and unit must be names, got {metric!r} and {unit!r}")
    # The tools read the device's type and name and the protocol's settings from these.
    for name in ("device", "protocol", "runtime"):
        if not isinstance(metadata[name], dict):
            raise UserError(f"{where}: metadata {name} must be an object, got {metadata[name]!r}")
    if metric not in METRIC_UNITS:
        raise UserError(f"{where}: unknown metric {metric!r}; known: {', '.join(METRIC_UNITS)}")
    if unit != METRIC_UNITS[metric]:
        raise UserError(f"{where}: unit {unit!r} for metric {metric!r}; expected {METRIC_UNITS[metric]!r}")
    if metadata["search_space_hash"] != operations.search_space_hash():
        raise UserError(f"{where}: made for search space {metadata['search_space_hash']}, this code defines "
                        f"{operations.search_space_hash()}; rebuild the table")
    for name, most in (("batch_size", MAX_BATCH_SIZE), ("num_classes", MAX_CLASSES)):
        value = metadata[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise UserError(f"{where}: metadata {name} must be an integer in [1, {most}], got {value!r}")
    threads = metadata.get("threads")  # None: a table of counts or from a device without CPU threads
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UserError(f"{where}: metadata threads must be a positive integer (or null), got {threads!r}")
    # The entries are keyed by the layout at 224 px and width 1.0; metadata saying otherwise contradicts them.
    if metadata["input_size"] != [3, INPUT_SIZE, INPUT_SIZE]:
        raise UserError(f"{where}: metadata input_size is {json_value_text(metadata['input_size'])}, but the entries "
                        f"are for [3, {INPUT_SIZE}, {INPUT_SIZE}]; rebuild the table")
    width_mult = metadata.get("width_mult", 1.0)
    if width_mult != 1.0 or isinstance(width_mult, bool):
        raise UserError(f"{where}: metadata width_mult is {json_value_text(width_mult)}, but the entries are for the "
                        "number 1.0; rebuild the table")
    _check_recorded_timing(metadata, where)
    calibration = metadata.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict) or not (
                is_finite_number(calibration.get("scale")) and is_finite_number(calibration.get("offset"))
                and calibration["scale"] > 0):
            raise UserError(f"{where}: calibration needs a positive 'scale' and a finite 'offset'")
        check_calibration_scale(calibration["scale"], where)


def _check_recorded_timing(metadata, where):
    """What validation and the closed loop take from a measured table: the
    reference network's median (a ratio's denominator) and the line its
    timings hold under."""
    noise = metadata.get("noise")
    if noise is not None and not isinstance(noise, dict):
        raise UserError(f"{where}: metadata noise must be an object, got {noise!r}")
    median = (noise or {}).get("reference_median_ms", 1.0)
    if not (is_finite_number(median) and median > 0):
        raise UserError(f"{where}: metadata noise reference_median_ms must be a positive number of ms, got {median!r}")
    condition = metadata["protocol"].get("condition")
    if condition is not None and not (isinstance(condition, dict) and isinstance(condition.get("line"), str)):
        raise UserError(f"{where}: metadata protocol condition must be an object with the 'line' to run under")


# A calibration rescales a table to measurements of the same device; a scale
# outside this range means the two are not of the same thing (seconds read as
# milliseconds, another device, another batch size).
CALIBRATION_SCALE_RANGE = (0.02, 50.0)


def check_calibration_scale(scale, where):
    low, high = CALIBRATION_SCALE_RANGE
    if not low <= scale <= high:
        raise UserError(f"{where}: a calibration scale of {scale:.4g} (measured / predicted) is outside "
                        f"[{low:g}, {high:g}]: the measurements and the table are not of the same thing (seconds "
                        "for milliseconds? another device or batch size?); measure the table's own device in its "
                        "unit")


def _check_fixed(fixed, num_classes, where):
    _check_entry(fixed, f"{where} 'fixed'")
    components = fixed.get("components")
    if components is None:
        return
    _check_entry_set(components, fixed_keys(num_classes), f"{where} fixed components")
    total = sum(entry["value"] for entry in components.values())
    if abs(total - fixed["value"]) > SUM_TOLERANCE * max(1.0, abs(total)):
        raise UserError(f"{where}: fixed components add up to {total:g}, not the fixed value {fixed['value']:g}")


def json_value_text(value):
    """A value read from a JSON file as the file writes it, a string named
    as one: "1.0" and 1.0 print alike otherwise."""
    text = json.dumps(value)
    return f"the string {text}" if isinstance(value, str) else text


def check_table(table, where):
    """Refuse a table that is not complete, consistent and made for this
    search space; every problem is one UserError line."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise UserError(f"{where}: not a LightNAS cost table (no \"format\": \"{TABLE_FORMAT}\")")
    version = table.get("format_version")
    if version != TABLE_FORMAT_VERSION or isinstance(version, bool):
        raise UserError(f"{where}: \"format_version\" is {json_value_text(version)}; this code reads the number "
                        f"{TABLE_FORMAT_VERSION} (a table written by another version, or edited: rebuild it)")
    metadata = table.get("metadata")
    _check_metadata(metadata, where)
    _check_fixed(table.get("fixed"), metadata["num_classes"], where)
    _check_entry_set(table.get("entries"), [key for row in layer_keys() for key in row], where)
    _check_reachable_range(table, where)
    _check_reference_level(table, where)


# The cheapest and the dearest architecture a table allows differ by at least
# this share of the dearest (several-fold on every real device): under it,
# any network lands within 1% of any target in range, and the search's cost
# term steers nothing.
MIN_COST_SPREAD = 0.01


def _check_reachable_range(table, where):
    """The costs a table gives must be ones a device could have: the
    cheapest architecture at least MIN_NETWORK_COST (a table of zeros, a
    calibration offset that drives costs below 0, or entries a million times
    too small would let the search chase costs no device has), not every
    architecture at one cost (entries all zero or all equal, or a
    calibration offset that dwarfs what the entries add: nothing for the
    search to trade), and a calibration offset no larger than the largest
    scale could make of the most expensive one."""
    entries, metadata = table["entries"], table["metadata"]
    fixed = table["fixed"]["value"]
    lowest = fixed + sum(min(entries[key]["value"] for key in row) for row in layer_keys())
    highest = fixed + sum(max(entries[key]["value"] for key in row) for row in layer_keys())
    unit = metadata["unit"]
    _refuse_implausibly_cheap(lowest, unit, where)
    _refuse_costs_too_close(lowest, highest, unit, where, "its entries barely differ between ops")
    calibration = metadata.get("calibration")
    if calibration is not None:
        if abs(calibration["offset"]) > CALIBRATION_SCALE_RANGE[1] * highest:
            raise UserError(f"{where}: a calibration offset of {calibration['offset']:.4g} {unit} is more than "
                            f"{CALIBRATION_SCALE_RANGE[1]:g} times the most expensive architecture's cost "
                            f"({highest:.4g}): the measurements and the table are not of the same thing; calibrate "
                            "it again from the raw table")
        lowest, highest = (calibration["scale"] * cost + calibration["offset"] for cost in (lowest, highest))
        _refuse_implausibly_cheap(lowest, unit, where)
        _refuse_costs_too_close(lowest, highest, unit, where, "its calibration offset dwarfs what the ops add")


# A measured table's reference median against its own cost of that network:
# timed in one session, the two agree within a few percent (the shipped Intel
# table: 17.32 and 17.38 ms); summing ops timed one by one can be some tens of
# percent off a whole network. Beyond a factor of 2 the median was edited.
REFERENCE_LEVEL_RANGE = (0.5, 2.0)


def _check_reference_level(table, where):
    """A measured latency table records the median time of its reference
    network, timed together with the entries; validation and the closed loop
    put later timings on the table's level through it. That network is in
    the search space, so the table's own cost of it must be of the same size
    (REFERENCE_LEVEL_RANGE), or every rescaled timing is off by the same
    factor."""
    metadata = table["metadata"]
    noise = metadata.get("noise") or {}
    median = noise.get("reference_median_ms")
    if metadata["metric"] != "latency" or noise.get("reference") != REFERENCE_NETWORK or median is None:
        return
    own_cost = TablePredictor(table, where).raw_cost(model_train.LIGHTNETS[REFERENCE_NETWORK])
    low, high = REFERENCE_LEVEL_RANGE
    if not low <= median / own_cost <= high:
        raise UserError(f"{where}: metadata noise reference_median_ms is {median:.4g} ms, but the table's own cost of "
                        f"{REFERENCE_NETWORK}, timed with it, is {own_cost:.4g} ms; the metadata was edited or "
                        "damaged: rebuild the table")


def _refuse_costs_too_close(lowest, highest, unit, where, why, kind="table", remedy="rebuild it"):
    if not highest - lowest > MIN_COST_SPREAD * abs(highest):
        raise UserError(f"{where}: every architecture costs {lowest:.4g} to {highest:.4g} {unit} by this {kind} "
                        f"({why}: under {MIN_COST_SPREAD:.0%} apart), so it cannot guide a search; {remedy}")


def format_cost(value, decimals=2):
    """A cost with `decimals` decimals, or, under 1, that many significant
    digits plus one: two decimals would print a table of microseconds' 0.0067
    ms as 0.01, or 0.00."""
    return f"{value:.{decimals}f}" if abs(value) >= 1 else f"{value:.{decimals + 1}g}"


def describe_range(low, high, unit, outside=None):
    """A range of costs with the digits its ends need: four significant, and
    more where a value `outside` it would otherwise print as one of its ends
    (5.15034 below 5.150345 is no target "outside 5.15 to 24.99")."""
    for digits in range(4, 18):
        shown_low, shown_high = (float(f"{end:.{digits}g}") for end in (low, high))
        if outside is None or not shown_low <= outside <= shown_high:
            break
    return f"{low:.{digits}g} to {high:.{digits}g} {unit}"


def _refuse_implausibly_cheap(lowest, unit, where, kind="table", remedy="rebuild it"):
    if not lowest >= MIN_NETWORK_COST:
        raise UserError(f"{where}: the cheapest architecture costs {lowest:.4g} {unit} by this {kind}; "
                        f"no device has that, so the {kind} is broken: {remedy}")


def load_table(path):
    """Read and check a table file."""
    where = f"table {path}"
    table = read_json(path, "table")
    check_table(table, where)
    return table


def check_table_path(path, replace=True):
    """Refuse an --out no table can be written to, before minutes of
    measuring; with replace=False, also one that already exists (a shipped
    or measured table is replaced only on request)."""
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; give the table's file name, e.g. {path}/my_device.json")
    # A link loop or a link to nothing, a device or pipe, a missing or read-only folder, a full disk, a name
    # too long: each named for what it is, before "already exists" (which --force would not mend).
    check_output_file(path, "--out")
    if not replace and os.path.lexists(path):
        raise UserError(f"--out {path} already exists; pass --force to replace it, or choose another --out")


def write_table(table, path):
    """Write a table atomically: a crash leaves the old file, never half a new one."""
    check_table_path(path)
    try:
        write_json(path, table, indent=1)
    except OSError as error:
        raise UserError(f"--out {path}: cannot write the table ({path_error_reason(error)}); choose a writable "
                        "path") from None


def new_table(metadata, fixed, entries):
    return {"format": TABLE_FORMAT, "format_version": TABLE_FORMAT_VERSION,
            "metadata": metadata, "fixed": fixed, "entries": entries}


def base_metadata(metric, batch_size, num_classes, threads):
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


def rounded_value(value):
    return round(float(value), VALUE_DECIMALS)


# ------------------------------------------------------------- predictors


def additive_totals(constant, layer_costs, indices):
    """constant + one 21x7 cost per layer, for op-index rows (N x 21)."""
    return constant + layer_costs[np.arange(NUM_SEARCHABLE_LAYERS), np.asarray(indices)].sum(axis=-1)


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
        # What the predictions depend on (the identifier names only the file): two tables of one name differ here.
        numbers = np.concatenate([[self.fixed_cost, self.scale, self.offset], self.layer_costs.ravel()])
        self.fingerprint = hashlib.sha256(numbers.astype("<f8").tobytes()).hexdigest()
        self._cost_tensors = {}

    def _calibrated(self, raw):
        return self.scale * raw + self.offset

    def raw_costs(self, indices):
        """Uncalibrated totals of op-index architectures (N x 21)."""
        return additive_totals(self.fixed_cost, self.layer_costs, indices)

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

    # The cost is exactly a constant plus one entry per (layer, op).
    is_additive = True

    def additive_form(self):
        """(constant, 21x7 per-layer costs) with cost = constant + the sum of
        each layer's entry, calibration included."""
        return float(self._calibrated(self.fixed_cost)), self.scale * self.layer_costs

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


MLP_REMEDY = "give the authors' file again"
MLP_PROBES = 64  # random architectures an MLP is tried on when loaded


def _check_mlp_outputs(network, path):
    """A damaged MLP (weights edited to NaN, a bias shifted far below 0) is
    refused when loaded: its weights must be finite and its latencies for a
    fixed sample of architectures plausible and spread apart (feasible_range
    checks its cheapest once a search asks for it)."""
    damaged = [name for name, tensor in network.state_dict().items() if not torch.isfinite(tensor).all()]
    if damaged:
        raise UserError(f"latency MLP {path}: its weights {', '.join(damaged)} hold NaN or infinite values; "
                        f"{MLP_REMEDY}")
    encodings = torch.from_numpy(one_hot(sample_architectures(MLP_PROBES, FIT_SEED)).reshape(MLP_PROBES, -1))
    with torch.no_grad():
        latencies = network(encodings)
    lowest, highest = float(latencies.min()), float(latencies.max())
    _refuse_implausible_mlp_range(lowest, highest, path)
    # The authors' MLP spreads these probes over several ms; a bias shifted far up flattens them.
    _refuse_costs_too_close(lowest, highest, METRIC_UNITS["latency"], f"latency MLP {path}",
                            f"over {MLP_PROBES} sampled architectures", kind="MLP",
                            remedy=f"the MLP is broken: {MLP_REMEDY}")


def _refuse_implausible_mlp_range(lowest, highest, path):
    """An MLP's latencies must be ones a device could have: the cheapest at
    least MIN_NETWORK_COST, the dearest at most MAX_ENTRY (a table's bound
    for one op: a million ms)."""
    where, unit = f"latency MLP {path}", METRIC_UNITS["latency"]
    _refuse_implausibly_cheap(lowest, unit, where, "MLP", MLP_REMEDY)
    if not highest <= MAX_ENTRY:
        raise UserError(f"{where}: an architecture costs {highest:.4g} {unit} by this MLP (at most {MAX_ENTRY:g} is "
                        f"plausible); the MLP is broken: {MLP_REMEDY}")


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
        _check_mlp_outputs(self.network, path)
        self.sha256 = file_sha256(path)
        self.fingerprint = self.sha256
        self.identifier = f"mlp:{file_name(path)}@{self.sha256[:12]}"
        self._networks = {(torch.device("cpu"), torch.float32): self.network}
        self._range = None
        self._additive = None

    # Not additive: additive_form() is a least-squares fit to it.
    is_additive = False

    def additive_form(self):
        """The MLP's additive fit (constant, 21x7), over FIT_TRAIN_ARCHS
        random architectures; computed once. An approximation: a result
        found with it must be checked with `costs`."""
        if self._additive is None:
            architectures = sample_architectures(FIT_TRAIN_ARCHS, FIT_SEED)
            constant, layer_costs, _ = fit_additive(architectures, self.costs(architectures))
            self._additive = (constant, layer_costs)
        return self._additive

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
            _, layer_costs = self.additive_form()
            extremes = (self._local_extreme(layer_costs.argmin(axis=1), sign=-1.0),
                        self._local_extreme(layer_costs.argmax(axis=1), sign=1.0))
            _refuse_implausible_mlp_range(*extremes, self.path)
            self._range = extremes
        return self._range

    def _local_extreme(self, indices, sign):
        best = sign * self.costs(indices[None])[0]
        while True:
            neighbours = np.repeat(indices[None], NUM_SEARCHABLE_LAYERS * NUM_OPS, axis=0)
            layers, ops = np.divmod(np.arange(len(neighbours)), NUM_OPS)
            neighbours[np.arange(len(neighbours)), layers] = ops
            values = sign * self.costs(neighbours)
            if not np.isfinite(values).all():  # NaN would never compare better: the walk would not end
                raise UserError(f"latency MLP {self.path}: it predicts non-finite latencies for some architectures; "
                                "give the authors' file again")
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
    entries, components = entries_from_values(probes, [{"value": rounded_value(count)} for count in counts],
                                               num_classes)
    metadata = base_metadata(metric, batch_size=1, num_classes=num_classes, threads=None)
    metadata.update(
        device={"type": "none", "name": "any (exact count, no device)", "identified_by": "not applicable"},
        runtime={"counter": "thop" if metric == "flops" else "sum of parameter sizes",
                 "thop": getattr(thop, "__version__", "unknown"), "torch": torch.__version__},
        protocol={"description": "counted per op module at its input shape for one image; FLOPs are "
                                 "multiply-accumulates as thop counts them (LightNAS's convention)"},
        source={"kind": "computed", "from": "operations.op() and model_train.LightNet"},
    )
    fixed = {"value": rounded_value(sum(entry["value"] for entry in components.values())), "components": components}
    return new_table(metadata, fixed, entries)


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
        if not spec[len(MLP_PREFIX):]:
            raise UserError(f"cost predictor {spec!r}: name the MLP's file after {MLP_PREFIX}, e.g. "
                            f"{MLP_PREFIX}../shared/data/lightnas_jetson_latency_mlp.pth.tar")
        return MLPPredictor(spec[len(MLP_PREFIX):])
    if spec.endswith((".pth.tar", ".pth", ".pt")):
        return MLPPredictor(spec)
    if spec.endswith(".json"):
        return table_predictor(spec)
    raise UserError(f"cost predictor {spec!r}: expected a .json table, the authors' latency MLP "
                    f"(.pth.tar or mlp:PATH), 'flops' or 'params'")


def file_name(path):
    """The name a predictor's file goes by in records (its identifier): the
    real file's, so that one file reached through a link or another spelling
    is one predictor to every check that compares them."""
    return os.path.basename(os.path.realpath(path))


def table_predictor(path):
    table = load_table(path)
    calibrated = "+calibrated" if table["metadata"].get("calibration") is not None else ""
    return TablePredictor(table, f"{file_name(path)}@{operations.search_space_hash()}{calibrated}")


def shipped_cpu_table(cpu_name):
    """The shipped CPU table measured on a CPU of this name, else CPU_LUT."""
    for path in CPU_LUTS:
        with open(path) as file:
            if json.load(file)["metadata"]["device"]["name"] == cpu_name:
                return path
    return CPU_LUT


# ------------------------------------------------------- additive fitting


def fit_additive(indices, values, non_negative=False):
    """Least squares of values ~ constant + sum over layers of cost[layer, op].

    Returns (constant, 21x7 costs, 21x7 standard errors) with SkipConnect
    anchored at 0 in every layer (skip_anchor_note() says why that choice is
    free). With `non_negative`, costs that come out negative are held at 0
    and the others refitted, until none is negative (a measured op cannot
    cost less than SkipConnect by more than noise).
    """
    free_ops = [index for index, name in enumerate(SEARCHABLE_OPS) if name != SKIP]
    encodings = one_hot(indices)[:, :, free_ops].reshape(len(indices), -1).astype(np.float64)
    design = np.hstack([np.ones((len(indices), 1)), encodings])
    values = np.asarray(values, dtype=np.float64)
    active = np.ones(design.shape[1], dtype=bool)  # columns still fitted; the constant always is
    while True:
        solution = np.zeros(design.shape[1])
        solution[active], *_ = np.linalg.lstsq(design[:, active], values, rcond=None)
        negative = solution < 0
        negative[0] = False
        if not (non_negative and negative.any()):
            break
        active &= ~negative
    standard_errors = np.zeros(design.shape[1])
    standard_errors[active] = _standard_errors(design[:, active], values - design @ solution)
    layer_costs, layer_errors = np.zeros((2, NUM_SEARCHABLE_LAYERS, NUM_OPS))
    layer_costs[:, free_ops] = solution[1:].reshape(NUM_SEARCHABLE_LAYERS, len(free_ops))
    layer_errors[:, free_ops] = standard_errors[1:].reshape(NUM_SEARCHABLE_LAYERS, len(free_ops))
    return float(solution[0]), layer_costs, layer_errors


def _standard_errors(design, residuals):
    """Standard error of each least-squares coefficient (0 with no residual
    degrees of freedom)."""
    degrees = len(residuals) - design.shape[1]
    if degrees <= 0:
        return np.zeros(design.shape[1])
    variance = (residuals ** 2).sum() / degrees
    return np.sqrt(np.clip(np.diag(np.linalg.pinv(design.T @ design)) * variance, 0, None))


# ---------------------------------------------------------------- probes


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


def entries_from_values(probes, values, num_classes):
    """Spread per-probe values over their keys: (layer entries, fixed components)."""
    by_key = {key: value for probe, value in zip(probes, values) for key in probe.keys}
    components = {key: by_key[key] for key in fixed_keys(num_classes)}
    entries = {key: by_key[key] for row in layer_keys() for key in row}
    return entries, components


if __name__ == "__main__":
    # A library: the tables' commands live with the builder, so that this
    # module, which every search step uses, depends on none of it.
    print("error: latency_predictor.py is the tables' library; their commands run from latency_build.py: "
          + shlex.join(["python3", "latency_build.py", *sys.argv[1:]]), file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)

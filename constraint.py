"""How the search meets its cost target: the Lagrange multiplier lambda, the
latch of the last epochs, and the per-step record of both.

The paper's rule (Section 3): after every alpha step,

    lambda += step * (LAT(argmax) / T - 1)

and lambda is reset to 0 whenever it pushes the wrong way; in the last
epochs, once |LAT(argmax) - T| is below a tolerance, alpha's learning rate
becomes its scheduled value times |LAT/T - 1|, which holds alpha near T.

The latch lives here whole (`Latch`: when it engages, alpha's lr under it,
lambda under it, which steps it undoes; `alpha_snapshot` and
`restore_flipped_layers`: the undo); the search's alpha pass only asks it.

Beyond the paper, also here: the latch's `hold` mode (LATCH_MODES) and the
exact projection of the final alpha onto a cost band behind --land_within
and --strict (project_to_band).
"""

import dataclasses
import math

import numpy as np
import torch


def update_lagrange_multiplier(tradeoff, cost, target, step):
    """One gradient-ascent step on lambda, then truncation: a lambda that
    pushes the wrong way (raises a too-slow network's latency or lowers a
    too-fast one's) is reset to 0."""
    tradeoff += step * (cost / target - 1.0)
    if (cost > target and tradeoff < 0) or (cost < target and tradeoff > 0):
        tradeoff = 0.0
    return tradeoff


@dataclasses.dataclass
class SearchState:
    """What the search carries from step to step besides the networks."""

    tradeoff: float   # lambda
    latched: bool = False  # the latch is on from now on (what it does: LATCH_MODES)


# What the latch does once the argmax is within the tolerance of T in the
# last epochs. scale: the paper's rule, alpha's lr times |LAT/T - 1|; alpha
# all but stops, and so does its learning. hold (beyond the paper): alpha
# keeps its scheduled lr, so the supernet's preferences keep sharpening, but
# when a step takes the argmax's cost out of the tolerance, the layers whose
# argmax it changed are put back (alpha and Adam's moments; the other layers
# keep the step); lambda is set to 0 and held there, since the hold, not
# lambda, now keeps the cost in the band.
LATCH_MODES = ("scale", "hold")


def latched_arch_lr(scheduled_lr, cost, target):
    """The paper's latch: alpha's lr scaled by the relative miss, so alpha
    all but stops while the argmax sits on the target."""
    return scheduled_lr * abs(cost / target - 1.0)


@dataclasses.dataclass
class Latch:
    """The latch in one place: when it engages, the lr it gives alpha, what
    lambda does under it, and (hold) which steps are undone. The search's
    alpha pass asks it before and after every step; the undo itself is
    `alpha_snapshot` / `restore_flipped_layers` below.

    `band` is the tolerance in the unit of T (tolerance_amount); `enabled`
    is False for the fixed penalty, which has no lambda and no latch."""

    mode: str          # LATCH_MODES
    hold_lambda: str   # "zero" or "keep": lambda under hold
    band: float
    target: float
    enabled: bool = True

    def near_target(self, cost):
        return abs(cost - self.target) < self.band

    def engage_if_near(self, state, cost, in_window):
        """Latch, once and for good, when the argmax's cost is within the
        band inside the latch window; hold with lambda "zero" sets lambda to
        0 (the target is met: alpha learns from the cross-entropy alone)."""
        if self.enabled and not state.latched and in_window and self.near_target(cost):
            state.latched = True
            if self.mode == "hold" and self.hold_lambda == "zero":
                state.tradeoff = 0.0

    def holding(self, state):
        return state.latched and self.mode == "hold"

    def arch_lr(self, state, scheduled_lr, cost):
        """alpha's lr for the next step: scaled by the miss under the
        paper's latch, the scheduled one otherwise (hold included)."""
        if state.latched and not self.holding(state):
            return latched_arch_lr(scheduled_lr, cost, self.target)
        return scheduled_lr

    def must_undo(self, state, new_cost):
        """hold: a step that took the argmax out of the band is undone."""
        return self.holding(state) and not self.near_target(new_cost)

    def updates_lambda(self, state):
        """lambda follows its rule unless the hold keeps it (at 0)."""
        return self.enabled and (not self.holding(state) or self.hold_lambda == "keep")


def alpha_snapshot(alpha, optimizer):
    """alpha and its Adam moments before a step, for restore_flipped_layers."""
    moments = {key: value.clone() for key, value in optimizer.state.get(alpha, {}).items()
               if torch.is_tensor(value) and value.shape == alpha.shape}
    return alpha.detach().clone(), moments


def restore_flipped_layers(alpha, optimizer, snapshot, logits_of):
    """Put back alpha and its Adam moments in the layers whose argmax the
    last step changed (`logits_of(alpha)`: the logits the argmax is taken
    of): their argmax is the snapshot's again, while every other layer keeps
    what it learned in the step. Returns the mask of restored layers."""
    before, moments = snapshot
    flipped = logits_of(alpha.detach()).argmax(dim=-1) != logits_of(before).argmax(dim=-1)
    with torch.no_grad():
        alpha[flipped] = before[flipped]
        for key, value in moments.items():
            optimizer.state[alpha][key][flipped] = value[flipped]
    return flipped


def parse_tolerance(text):
    """(amount, relative) from "0.15" (in the unit of T) or "0.5%" (a share
    of T); ValueError with the reason otherwise."""
    text = str(text).strip()
    relative = text.endswith("%")
    try:
        amount = float(text[:-1] if relative else text)
    except ValueError:
        raise ValueError(f"must be a number such as 0.15 or a share of the target such as 0.5%, got {text!r}") from None
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"must be non-negative and finite, got {text!r}")
    if relative and amount >= 100:
        raise ValueError(f"must be a share below 100% of the target (at 100% every architecture counts as "
                         f"landed), got {text!r}")
    return amount, relative


def tolerance_amount(text, target):
    """The tolerance `text` (see parse_tolerance) in the unit of `target`."""
    amount, relative = parse_tolerance(text)
    return amount / 100.0 * target if relative else amount


# Per alpha step, in this order; `metrics.jsonl` keeps them as columns.
STEP_FIELDS = (
    "argmax_cost",    # the cost of alpha's argmax architecture after the step (what lambda follows)
    "expected_cost",  # the cost of alpha's distribution, sum over layers of p * cost (the predictor's
                      # expected_cost of softmax(alpha); for a table exactly the expectation)
    "sample_cost",    # the cost of the hard Gumbel sample the step trained
    "tradeoff",       # lambda after the step
    "latched",        # whether the latch was on during the step
    "arch_lr",        # alpha's lr in the step
    "undone",         # --latch hold: the step took the argmax out of the band; its flipped layers were put back
)


def new_step_log():
    """Empty columns, one per STEP_FIELDS entry."""
    return {name: [] for name in STEP_FIELDS}


def append_step(log, **values):
    if set(values) != set(STEP_FIELDS):
        raise ValueError(f"a step records exactly {STEP_FIELDS}, got {sorted(values)}")
    for name in STEP_FIELDS:
        log[name].append(values[name])


# The epoch-level value in a metrics row that stands for a step field in an
# epoch without alpha steps (the warm-up).
EPOCH_FIELDS = {"argmax_cost": "cost", "expected_cost": "expected_cost", "tradeoff": "tradeoff",
                "latched": "latched", "arch_lr": "arch_lr"}


def step_series(rows, field):
    """(x, y) of one step field over metrics rows: x is the epoch position
    (epoch e's k-th of n steps at e - 1 + k / n); an epoch without alpha
    steps contributes its epoch-level value at x = epoch."""
    xs, ys = [], []
    for row in rows:
        values = (row.get("steps") or {}).get(field) or []
        if values:
            xs += [row["epoch"] - 1 + (index + 1) / len(values) for index in range(len(values))]
            ys += values
        elif row.get(EPOCH_FIELDS.get(field)) is not None:
            xs.append(row["epoch"])
            ys.append(row[EPOCH_FIELDS[field]])
    return xs, ys


# ------------------------------------------------- the projection onto a band
#
# `--land_within P` and `--strict` (beyond the paper) replace the final argmax
# by the most probable architecture whose cost lies in a band around the
# target: the one with the largest sum over layers of log p among those with
# low <= cost <= high. For a cost that is a constant plus one entry per
# (layer, op) this is a multiple-choice knapsack with a two-sided capacity,
# solved exactly below by branch and bound: a depth-first search over the
# layers, the most probable op first, pruned by an upper bound on what the
# remaining layers can add. The bound comes from a dynamic programme over
# costs rounded down to a grid: rounding down only widens what the remaining
# layers seem able to reach, so the bound never undercuts the truth and no
# optimum is pruned.

GRID_CELLS = 1 << 16  # cells of the bounding grid over the cost range; only speed depends on it
# Sums of the same log p added in another order can differ in the last bits;
# a branch whose bound beats the best found by less than this is pruned, or
# ties would be explored over and over.
TIE = 1e-9


def _suffix_bounds(log_p, units):
    """best[l][n]: the largest sum of log p over layers l.. whose rounded
    costs add up to n grid cells (-inf where none does)."""
    layers = len(units)
    size = int(units.max(axis=1).sum()) + 1
    best = np.full((layers + 1, size), -np.inf)
    best[layers, 0] = 0.0
    for layer in range(layers - 1, -1, -1):
        following = best[layer + 1]
        for op, cells in enumerate(units[layer]):
            shifted = np.full(size, -np.inf)
            shifted[cells:] = following[:size - cells] + log_p[layer, op]
            np.maximum(best[layer], shifted, out=best[layer])
    return best


def _cells_below(amount, cell, cells):
    """floor(amount / cell), held within [-1, cells] (amount may be infinite)."""
    return int(math.floor(min(max(amount / cell, -1.0), float(cells))))


def most_probable_in_band(log_p, layer_costs, constant, low, high):
    """The op indices (one per layer) maximising sum(log_p) subject to
    low <= constant + sum(layer_costs[layer, op]) <= high, or None if no
    architecture's cost is in the band. Ties go to the architecture met
    first when every layer tries its ops from the most probable down, so an
    argmax already in the band is returned unchanged."""
    log_p = np.asarray(log_p, dtype=np.float64)
    layer_costs = np.asarray(layer_costs, dtype=np.float64)
    floor = layer_costs.min(axis=1)
    excess = layer_costs - floor[:, None]       # >= 0: what each op costs above its layer's cheapest
    low_excess, high_excess = low - constant - floor.sum(), high - constant - floor.sum()
    layers = len(excess)
    cell = max(excess.max(axis=1).sum() / GRID_CELLS, 1e-12)
    # Each excess lies in [units, units + 1) cells; the factor keeps rounding
    # from ever putting it a cell too high.
    units = np.floor(excess / cell * (1.0 - 1e-12)).astype(np.int64)
    bounds = _suffix_bounds(log_p, units)
    prefix_best = np.maximum.accumulate(bounds, axis=1)  # best over cells 0..n: the bound when low is out of play
    order = np.argsort(-log_p, axis=1, kind="stable")
    best = {"value": -np.inf, "indices": None}
    chosen = [0] * layers

    def bound(layer, spent):
        """An upper bound on the log p the layers from `layer` on can add,
        given the excess cost `spent` so far (-inf: the band is out of reach)."""
        remaining, cells = layers - layer, bounds.shape[1]
        first = max(0, _cells_below(low_excess - spent, cell, cells) - remaining - 1)
        last = min(cells - 1, _cells_below(high_excess - spent, cell, cells))  # -1 once over the band
        if first > last:
            return -np.inf
        return prefix_best[layer, last] if first == 0 else bounds[layer, first:last + 1].max()

    def visit(layer, spent, value):
        if layer == layers:
            if low_excess <= spent <= high_excess and value > best["value"]:
                best["value"], best["indices"] = value, list(chosen)
            return
        # Each op with the most its completions can reach; the most promising
        # first, so the first architecture found is already (nearly) the best
        # and the bound prunes almost everything after it.
        options = []
        for op in order[layer]:
            next_spent, next_value = spent + excess[layer, op], value + log_p[layer, op]
            options.append((next_value + bound(layer + 1, next_spent), int(op), next_spent, next_value))
        options.sort(key=lambda option: -option[0])  # stable: equal promise keeps the most probable op first
        for promise, op, next_spent, next_value in options:
            if promise <= best["value"] + TIE:
                break
            chosen[layer] = op
            visit(layer + 1, next_spent, next_value)

    argmax = log_p.argmax(axis=1)
    if low_excess <= excess[np.arange(layers), argmax].sum() <= high_excess:
        return [int(op) for op in argmax]
    if bound(0, 0.0) > -np.inf:
        visit(0, 0.0, 0.0)
    return best["indices"]


def landing_band(target, land_within_percent, strict):
    """(low, high) that --land_within P and --strict ask of the final cost:
    within +-P% of T, at most T, or both (their intersection); None when
    neither is set (the raw argmax, as in the paper)."""
    if not land_within_percent and not strict:
        return None
    share = land_within_percent / 100.0 if land_within_percent else math.inf
    low, high = target * (1.0 - share), target * (1.0 + share)
    return low, (min(high, target) if strict else high)


# A predictor that is not additive (the authors' MLP) is projected with its
# additive fit; when the real predictor puts the result outside the band,
# the band is shifted by the fit's error there and the projection repeated.
FIT_RETRIES = 8


def project_to_band(log_p, predictor, low, high):
    """The most probable architecture (op indices) whose cost by `predictor`
    lies in [low, high], or None. Exact for a table (latency, energy,
    FLOPs or params); for the MLP, the exact answer for its additive fit,
    checked with the MLP itself."""
    constant, layer_costs = predictor.additive_form()
    layer_costs = np.asarray(layer_costs, dtype=np.float64)
    shift = 0.0
    for _ in range(FIT_RETRIES if not predictor.is_additive else 1):
        indices = most_probable_in_band(log_p, layer_costs, constant, low - shift, high - shift)
        if indices is None:
            return None
        cost = float(predictor.costs(np.array([indices]))[0])
        if low <= cost <= high:
            return indices
        fitted = constant + float(layer_costs[np.arange(len(indices)), indices].sum())
        shift = cost - fitted  # the fit's error at this architecture
    return None

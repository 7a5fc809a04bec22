"""The search's constraint handling (constraint.py): lambda's rule, the
latch tolerance, and the exact projection onto a cost band, checked against
brute force over every architecture of a small space."""

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import constraint
import latency_predictor

LAYERS, OPS = 4, 7  # 7**4 = 2,401 architectures


def brute_force(log_p, layer_costs, constant, low, high):
    """(best sum of log p, cost) over every architecture in [low, high]."""
    best = None
    for indices in itertools.product(range(OPS), repeat=LAYERS):
        cost = constant + sum(layer_costs[layer, op] for layer, op in enumerate(indices))
        if low <= cost <= high:
            value = sum(log_p[layer, op] for layer, op in enumerate(indices))
            if best is None or value > best[0]:
                best = (value, cost)
    return best


def random_case(rng):
    alpha = rng.normal(0.0, rng.choice([0.3, 1.0, 3.0]), (LAYERS, OPS))
    log_p = alpha - np.log(np.exp(alpha).sum(axis=1, keepdims=True))
    layer_costs = rng.uniform(0.0, 3.0, (LAYERS, OPS))
    layer_costs[:, -1] = 0.0  # a free op, like SkipConnect
    return log_p, layer_costs, float(rng.uniform(0.0, 2.0))


@pytest.mark.parametrize("seed", range(40))
def test_projection_is_the_brute_force_optimum_on_all_2401_architectures(seed):
    rng = np.random.default_rng(seed)
    log_p, layer_costs, constant = random_case(rng)
    centre = constant + rng.uniform(0.0, 3.0 * LAYERS)
    width = rng.choice([0.01, 0.1, 1.0])
    for low, high in ((centre - width, centre + width), (-math.inf, centre), (centre, math.inf)):
        expected = brute_force(log_p, layer_costs, constant, low, high)
        found = constraint.most_probable_in_band(log_p, layer_costs, constant, low, high)
        if expected is None:
            assert found is None
            continue
        cost = constant + layer_costs[np.arange(LAYERS), found].sum()
        assert low <= cost <= high
        assert log_p[np.arange(LAYERS), found].sum() == pytest.approx(expected[0], abs=1e-9)


def test_projection_keeps_an_argmax_already_in_the_band():
    rng = np.random.default_rng(0)
    log_p, layer_costs, constant = random_case(rng)
    argmax = log_p.argmax(axis=1)
    cost = constant + layer_costs[np.arange(LAYERS), argmax].sum()
    assert constraint.most_probable_in_band(log_p, layer_costs, constant, cost - 1e-6, cost + 1e-6) == list(argmax)


def test_projection_on_the_jetson_table_lands_every_target_even_near_the_edges():
    # Too many architectures for brute force (7**21). The projection must beat
    # every in-band architecture one op away from it, and every in-band one
    # among many drawn from alpha (at 24 ms many are; near the edges none).
    predictor = latency_predictor.load_predictor()
    lowest, highest = predictor.feasible_range()
    rng = np.random.default_rng(1)
    layers = np.arange(21)
    for target in (lowest + 0.5, 12.5, 24.0, highest - 0.5):
        alpha = rng.normal(0.0, 2.0, (21, 7))
        log_p = alpha - np.log(np.exp(alpha).sum(axis=1, keepdims=True))
        band = constraint.landing_band(target, 1.0, strict=False)
        indices = constraint.project_to_band(log_p, predictor, *band)
        assert band[0] <= predictor.costs(np.array([indices]))[0] <= band[1]
        best = log_p[layers, indices].sum()
        neighbours = np.array([indices[:layer] + [op] + indices[layer + 1:] for layer in layers for op in range(7)
                               if op != indices[layer]])
        costs = predictor.costs(neighbours)
        in_band = neighbours[(costs >= band[0]) & (costs <= band[1])]
        assert (log_p[layers, in_band].sum(axis=1) <= best + 1e-9).all()
        drawn = np.stack([rng.choice(7, size=20_000, p=np.exp(row)) for row in log_p], axis=1)
        costs = predictor.costs(drawn)
        in_band = drawn[(costs >= band[0]) & (costs <= band[1])]
        assert len(in_band) > 0 or target != 24.0
        assert (log_p[layers, in_band].sum(axis=1) <= best + 1e-9).all()


def test_landing_band_is_the_intersection_of_land_within_and_strict():
    assert constraint.landing_band(20.0, 0.0, strict=False) is None
    assert constraint.landing_band(20.0, 1.0, strict=False) == pytest.approx((19.8, 20.2))
    assert constraint.landing_band(20.0, 0.0, strict=True) == (-math.inf, 20.0)
    assert constraint.landing_band(20.0, 1.0, strict=True) == pytest.approx((19.8, 20.0))


def test_latch_tolerance_is_absolute_or_a_share_of_the_target():
    assert constraint.tolerance_amount("0.15", 24.0) == pytest.approx(0.15)
    assert constraint.tolerance_amount("1%", 24.0) == pytest.approx(0.24)
    for bad in ("-1", "1e999", "x%", ""):
        with pytest.raises(ValueError):
            constraint.parse_tolerance(bad)


@pytest.mark.parametrize("cost, start, expected_sign", [(26.0, 0.0, 1), (22.0, 0.0, -1), (22.0, 0.5, -1),
                                                        (26.0, -0.5, 1)])
def test_lambda_pushes_toward_the_target_and_is_reset_when_it_pushes_away(cost, start, expected_sign):
    tradeoff = constraint.update_lagrange_multiplier(start, cost, 24.0, step=0.1)
    assert np.sign(tradeoff) in (0, expected_sign)
    assert np.sign(constraint.update_lagrange_multiplier(tradeoff, cost, 24.0, step=0.1)) == expected_sign


def load_landing_benchmark():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "landing.py"
    spec = importlib.util.spec_from_file_location("landing", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_and_landing_help_render():
    """argparse expands % in help texts: a schedule value such as "1%" must
    reach it escaped, or --help itself crashes."""
    import search_imagenet

    text = " ".join(search_imagenet.get_args_parser().format_help().split())
    assert "share of T such as 0.5% (paper: 0.15, demo: 1%)" in text
    assert "--variants" in load_landing_benchmark().get_args_parser().format_help()


@pytest.mark.parametrize("seed", range(5))
def test_projection_never_gives_up_more_log_probability_than_the_greedy_repair(seed):
    landing = load_landing_benchmark()
    predictor = latency_predictor.load_predictor()
    rng = np.random.default_rng(seed)
    alpha = rng.normal(0.0, 2.0, (21, 7))
    log_p = alpha - np.log(np.exp(alpha).sum(axis=1, keepdims=True))
    raw = [int(op) for op in log_p.argmax(axis=1)]

    def cost(indices):
        return float(predictor.costs(np.array([indices]))[0])

    low, high = constraint.landing_band(cost(raw) * 0.9, 0.25, strict=False)  # a 10% miss, a narrow band
    greedy = landing.greedy_repair(raw, log_p, cost, low, high)
    exact = constraint.project_to_band(log_p, predictor, low, high)
    assert low <= cost(exact) <= high
    assert log_p[np.arange(21), exact].sum() >= log_p[np.arange(21), greedy].sum() - 1e-9


def test_the_latch_engages_once_near_the_target_and_decides_lr_lambda_and_undo():
    band, target = 0.24, 24.0  # 1%
    hold = constraint.Latch("hold", "zero", band, target)
    state = constraint.SearchState(tradeoff=0.3)
    hold.engage_if_near(state, 24.5, in_window=True)  # outside the band
    hold.engage_if_near(state, 24.1, in_window=False)  # before the window
    assert not state.latched and state.tradeoff == 0.3 and hold.updates_lambda(state)
    hold.engage_if_near(state, 24.1, in_window=True)
    assert state.latched and state.tradeoff == 0.0 and not hold.updates_lambda(state)
    assert hold.arch_lr(state, 0.1, 24.1) == 0.1  # hold keeps the scheduled lr
    assert hold.must_undo(state, 24.3) and not hold.must_undo(state, 23.8)

    keep = constraint.Latch("hold", "keep", band, target)
    state = constraint.SearchState(tradeoff=0.3)
    keep.engage_if_near(state, 24.1, in_window=True)
    assert state.latched and state.tradeoff == 0.3 and keep.updates_lambda(state)

    scale = constraint.Latch("scale", "zero", band, target)  # the paper's latch
    state = constraint.SearchState(tradeoff=0.3)
    scale.engage_if_near(state, 24.1, in_window=True)
    assert state.latched and state.tradeoff == 0.3 and scale.updates_lambda(state)
    assert scale.arch_lr(state, 0.1, 24.6) == pytest.approx(0.1 * 0.025)
    assert not scale.must_undo(state, 30.0)

    fixed = constraint.Latch("hold", "zero", band, target, enabled=False)  # the fixed penalty: no lambda, no latch
    state = constraint.SearchState(tradeoff=0.0)
    fixed.engage_if_near(state, 24.0, in_window=True)
    assert not state.latched and not fixed.updates_lambda(state)


def test_restore_flipped_layers_puts_back_alpha_and_adams_moments_where_the_argmax_moved():
    alpha = torch.nn.Parameter(torch.zeros(4, 3))
    with torch.no_grad():
        alpha[:, 0] = 1.0  # every layer's argmax is op 0
    optimizer = torch.optim.Adam([alpha], lr=2.0)

    def adam_step(gradient):
        optimizer.zero_grad()
        (alpha * gradient).sum().backward()
        optimizer.step()

    adam_step(torch.tensor([[0.0, 1.0, 0.0]] * 4))  # moments exist; op 1 falls, no argmax moves
    snapshot = constraint.alpha_snapshot(alpha, optimizer)
    gradient = torch.tensor([[0.0, 1.0, 0.0]] * 4)
    gradient[2] = torch.tensor([1.0, 0.0, -1.0])  # layer 2: op 2 overtakes op 0
    adam_step(gradient)
    stepped = alpha.detach().clone()
    assert stepped.argmax(dim=-1).tolist() == [0, 0, 2, 0]

    flipped = constraint.restore_flipped_layers(alpha, optimizer, snapshot, lambda logits: logits)
    assert flipped.tolist() == [False, False, True, False]
    before, moments = snapshot
    assert torch.equal(alpha[2], before[2]) and alpha.argmax(dim=-1).tolist() == [0, 0, 0, 0]
    for layer in (0, 1, 3):  # the other layers keep what the step taught them
        assert torch.equal(alpha[layer], stepped[layer]) and not torch.equal(alpha[layer], before[layer])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizer.state[alpha][key][2], moments[key][2])
        assert not torch.equal(optimizer.state[alpha][key][0], moments[key][0])

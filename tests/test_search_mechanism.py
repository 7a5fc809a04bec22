"""The search's mechanism, on supernets small enough for a test.

The latency term alone pulls alpha towards cheaper ops (or dearer ones when
lambda < 0), and fails if its sign is flipped. Alpha's cross-entropy signal,
with the demo's shortcuts: in a supernet of the first six searchable layers
in which one op per layer has been trained, descending the loss makes the
trained ops the argmax and climbing it drives them to probability ~0 (in the
full 21-layer supernet the same search does not find them:
benchmarks/estimator_signal.py measures both, with the helpers used here).
With eta = 0 the last layer gets no cross-entropy signal at all (a scale
that BatchNorm undoes)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import latency_predictor
import operations
from model_search import SuperNet, gumbel_softmax_hard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from estimator_signal import (NUM_CLASSES, SMALL_DEPTH, THREADS, WIDTH, search_alpha, toy_batches,  # noqa: E402
                              train_one_path)


@pytest.fixture(scope="module")
def measured_threads():
    """The thread count the figures were measured with, whatever the machine
    or OMP_NUM_THREADS gives (the result depends on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_trained_path_supernet(measured_threads):
    supernet = train_one_path(SMALL_DEPTH)
    assert supernet.final_loss < 0.3  # the trained path has learned the task
    return supernet


def test_cross_entropy_alone_moves_alpha_to_the_trained_ops_of_a_small_supernet(small_trained_path_supernet):
    """What the search exists for, in six layers: descending the loss makes
    the trained op the argmax wherever the layer changes the shape, and
    concentrates alpha on the trained ops; climbing it drives them to
    probability ~0. Measured with five training seeds (300 steps): the
    trained op won all 15 shape-changing layers and 10 of the 15
    shape-keeping ones (25 of 30); the trained ops ended at a mean
    probability of 0.57-0.98 descending, below 0.001 climbing. In a
    shape-keeping layer the op's output contains its input (the residual),
    so the scale the estimator measures is mostly the input's, and an
    untrained op or the identity skip can tie with the trained one. This
    seed gets 4 of 6 (0.57); routing no gradient to the chosen entry gives
    0.14, the uniform value."""
    supernet = small_trained_path_supernet
    descended, found = search_alpha(supernet, sign=1.0, steps=300)
    climbed, _ = search_alpha(supernet, sign=-1.0, steps=300)
    good_ops = supernet.good_ops.tolist()
    layout = operations.LAYOUT[1:SMALL_DEPTH + 1]
    reshaping = [index for index, spec in enumerate(layout) if spec.stride != 1 or spec.in_channels != spec.out_channels]
    assert reshaping == [0, 2, 5]
    assert all(found[index] == good_ops[index] for index in reshaping), (found, good_ops)
    assert descended >= 0.45 and climbed < 0.05, (found, good_ops, descended, climbed)


def test_without_shortcuts_the_last_layer_gets_no_cross_entropy_signal():
    """Why the demo uses eta: a layer's one-hot weight only scales its op's
    output, and the next op starts with a conv and a BatchNorm in training
    mode, which undo any scale. So with eta = 0 the straight-through
    gradient of the last searchable layer (no residual after it) is zero."""
    torch.manual_seed(0)
    supernet = SuperNet(NUM_CLASSES, width_mult=WIDTH, dropout=0.0).train()
    images, targets = next(toy_batches(torch.Generator().manual_seed(0), 1))
    sample = gumbel_softmax_hard(supernet.alpha, tau=1.0, generator=torch.Generator().manual_seed(0))
    F.cross_entropy(supernet(images, sample), targets).backward()
    last_layer = supernet.alpha.grad[-1]
    assert last_layer.abs().max() < 1e-6 * supernet.alpha.grad.abs().max() or last_layer.abs().max() < 1e-9
    assert supernet.alpha.grad.abs().max() > 0  # the other layers do get some (via residuals)


@pytest.mark.parametrize("tradeoff", [1.0, -1.0])
def test_latency_term_alone_moves_alpha_towards_cheaper_or_dearer_ops(tradeoff):
    """lambda > 0 (too slow) pulls every layer to cheaper ops, lambda < 0
    (too fast) to dearer ones, through the table's expected cost."""
    predictor = latency_predictor.load_predictor()
    table = torch.tensor(predictor.layer_costs, dtype=torch.float32)  # 21 x 7, ms
    alpha = torch.zeros(21, 7, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=0.05, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(0)
    target = 24.0
    for _ in range(150):
        sample = gumbel_softmax_hard(alpha, tau=1.0, generator=generator)
        loss = tradeoff * (predictor.expected_cost(sample) / target - 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    chosen = alpha.detach().argmax(dim=-1)
    extreme = table.argmin(dim=-1) if tradeoff > 0 else table.argmax(dim=-1)
    matches = int((chosen == extreme).sum())
    assert matches >= 19, (chosen.tolist(), extreme.tolist())

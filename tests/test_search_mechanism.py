"""The search's mechanism, on supernets small enough for a test.

The latency term alone pulls alpha towards cheaper ops (or dearer ones when
lambda < 0), and fails if its sign is flipped. Alpha's cross-entropy signal,
with the demo's shortcuts: in a supernet of the first six searchable layers
in which one op per layer has been trained, descending the loss makes the
trained ops the argmax and climbing it drives them to probability ~0. In the
full 21-layer supernet the same search does not find them; that test is a
strict xfail that records the measurement and turns red once it passes.
With eta = 0 the last layer gets no cross-entropy signal at all (a scale
that BatchNorm undoes)."""

import pytest
import torch
import torch.nn.functional as F

import latency_predictor
import operations
from model_search import SuperNet, gumbel_softmax_hard, one_hot_paths

NUM_CLASSES = 4
IMAGE_SIZE = 16
WIDTH = 0.25  # a narrow supernet: the layout's shapes, a fraction of the cost


def toy_batches(generator, count, batch_size=32):
    """A task a network learns quickly: each class is a fixed random image
    (the same for every generator) seen through noise drawn from `generator`."""
    prototypes = torch.randn(NUM_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(123))
    for _ in range(count):
        targets = torch.randint(NUM_CLASSES, (batch_size,), generator=generator)
        images = prototypes[targets] + 0.8 * torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        yield images, targets


ETA = 3.0  # the demo's shared shortcut weight
SMALL_DEPTH = 6  # searchable layers 1-6: 112 px to 28 px, three of them change the shape


def first_layers_only(supernet, depth):
    """Cut `supernet` after its first `depth` searchable layers: a new head
    for the last kept layer's channels and an alpha of `depth` rows."""
    supernet.layers = supernet.layers[:depth]
    channels = operations.scaled_layout(WIDTH)[depth].out_channels
    supernet.last_conv = operations.conv_bn_relu6(channels, operations.head_channels(WIDTH), 1, 1, affine=False)
    supernet.alpha = torch.nn.Parameter(torch.zeros(depth, operations.NUM_OPS))
    return supernet


def train_one_path(depth):
    """A supernet (with the eta shortcuts the demo uses) in which only one
    op per layer, an MBConv chosen at random, has been trained; the other
    six keep their initial weights."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    supernet = SuperNet(NUM_CLASSES, width_mult=WIDTH, dropout=0.0, shortcuts=True)
    if depth < operations.NUM_SEARCHABLE_LAYERS:
        first_layers_only(supernet, depth)
    good_ops = torch.randint(0, operations.NUM_OPS - 1, (depth,), generator=generator)
    optimizer = torch.optim.SGD(supernet.weight_parameters(), lr=0.02, momentum=0.9)
    supernet.train()
    for images, targets in toy_batches(generator, 80):
        loss = F.cross_entropy(supernet(images, one_hot_paths(good_ops), ETA), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3  # the trained path has learned the task
    for parameter in supernet.weight_parameters():
        parameter.requires_grad_(False)
    supernet.good_ops = good_ops
    return supernet


@pytest.fixture(scope="module")
def trained_path_supernet():
    return train_one_path(operations.NUM_SEARCHABLE_LAYERS)


@pytest.fixture(scope="module")
def small_trained_path_supernet():
    return train_one_path(SMALL_DEPTH)


def search_alpha(supernet, sign, steps=168):
    """Adam on alpha alone (lambda = 0: no latency term), every layer
    sampling at each step as in the search; `sign` -1 climbs the loss."""
    with torch.no_grad():
        supernet.alpha.copy_(1e-3 * torch.randn(supernet.alpha.shape, generator=torch.Generator().manual_seed(3)))
    optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=0.1, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(1)
    for images, targets in toy_batches(torch.Generator().manual_seed(2), steps):
        sample = gumbel_softmax_hard(supernet.alpha, tau=1.0, generator=generator)
        loss = sign * F.cross_entropy(supernet(images, sample, ETA), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probabilities = supernet.op_probabilities()
    rows = torch.arange(len(supernet.good_ops))
    return probabilities[rows, supernet.good_ops].mean().item(), supernet.derive_indices()


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


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="measured: the single-path straight-through estimator does not find the trained ops in "
                          "this budget (see docs/search.md, Alpha's signal in a small supernet)")
def test_cross_entropy_alone_moves_alpha_to_the_trained_ops_of_the_full_supernet(trained_path_supernet):
    """What the search exists for: descending the loss should make the
    trained op each layer's argmax, and climbing it should not. Measured
    (Adam lr 0.1, 168 steps): descending gives the trained ops a mean
    probability of 0.32 and 9 of 21 argmaxes, climbing 0.29 and 7 of 21,
    so the estimator's signal is too weak to tell them apart; at lr 0.01
    and 0.03 it is no better. Averaging 8 sampled paths per step (100
    steps) gives 0.44 and 9 of 21 against 0.27 and 6 of 21 climbing. The
    mean gradient at uniform alpha (400 paths) favours the trained op in
    8 of 21 layers, nearly all among the first six: a later layer's trained
    op only helps when the layers before it run trained ops too, so its
    signal appears only once the earlier layers have concentrated. With 300
    steps: 0.35 and 8 of 21 descending, 0.14 and 3 of 21 climbing. The same
    search on the first six layers alone does find them (the test above).
    Kept as a strict xfail so that a fix shows (climbing runs only once
    descending finds the trained ops: until then it would not change the
    outcome)."""
    supernet = trained_path_supernet
    good_ops = supernet.good_ops
    descended, found = search_alpha(supernet, sign=1.0)
    matches = sum(found_op == good_op for found_op, good_op in zip(found, good_ops.tolist()))
    assert matches >= 19, (descended, matches)
    climbed, _ = search_alpha(supernet, sign=-1.0)
    assert descended > climbed + 0.3, (descended, climbed, matches)


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

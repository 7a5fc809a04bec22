"""Alpha's cross-entropy signal through the single-path estimator, measured.

The search's hard Gumbel sample runs one op per layer, and alpha learns from
the cross-entropy only through the chosen op's one-hot weight (the
straight-through estimator). Whether that signal can find good ops is
measured here on a supernet in which one op per layer, an MBConv drawn at
random, has been trained on a toy task and the other six keep their initial
weights: Adam on alpha alone (no latency term) descends the loss, then, as a
control, climbs it. A working signal gives the trained ops a high mean
probability and most argmaxes descending, and a low one climbing.

    python3 benchmarks/estimator_signal.py              # the first 6 layers, then all 21 (about a minute)

Measured on 2026-12-07 (2 threads, a 2-core AMD EPYC VM, about two minutes
beside other work):

     6 layers, 300 steps (trained path's loss 0.001): trained ops descending: mean probability 0.66, argmax 4 of 6; climbing: 0.00
    21 layers, 168 steps (trained path's loss 0.087): trained ops descending: mean probability 0.32, argmax 7 of 21; climbing: 0.29

In six layers the signal finds the trained ops and the climb drives them to
0; in 21 it cannot tell descending from climbing. tests/test_search_mechanism.py
checks the six-layer result (and, before this script, kept the 21-layer one
as a strict xfail, 40 s of the suite for a known failure).
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import operations  # noqa: E402
from model_search import SuperNet, gumbel_softmax_hard, one_hot_paths  # noqa: E402
from utils import run_cli  # noqa: E402

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


# Hundreds of Adam steps on alpha amplify the rounding of float sums, which
# depends on how many threads split them: with 1 thread the six-layer climb
# ends at 0.16 instead of 0.0005. The figures are measured with 2.
THREADS = 2
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
    for parameter in supernet.weight_parameters():
        parameter.requires_grad_(False)
    supernet.good_ops = good_ops
    supernet.final_loss = loss.item()  # under 0.3: the trained path has learned the task
    return supernet


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


def measure(depth, steps):
    """The trained ops' mean probability and argmax matches after descending
    the loss for `steps` steps, and their mean probability after climbing it."""
    supernet = train_one_path(depth)
    descended, found = search_alpha(supernet, sign=1.0, steps=steps)
    matches = sum(found_op == good_op for found_op, good_op in zip(found, supernet.good_ops.tolist()))
    climbed, _ = search_alpha(supernet, sign=-1.0, steps=steps)
    return {"depth": depth, "steps": steps, "final_loss": supernet.final_loss, "descended": descended,
            "matches": matches, "climbed": climbed}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Alpha's cross-entropy signal through the single-path estimator.")
    parser.add_argument("--small_steps", type=int, default=300, help="alpha steps on the six-layer supernet")
    parser.add_argument("--full_steps", type=int, default=168, help="alpha steps on the 21-layer supernet")
    return parser


def main(args):
    torch.set_num_threads(THREADS)
    for depth, steps in ((SMALL_DEPTH, args.small_steps), (operations.NUM_SEARCHABLE_LAYERS, args.full_steps)):
        result = measure(depth, steps)
        print(f"{depth:2d} layers, {steps} steps (trained path's loss {result['final_loss']:.3f}): trained ops "
              f"descending: mean probability {result['descended']:.2f}, argmax {result['matches']} of {depth}; "
              f"climbing: {result['climbed']:.2f}", flush=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())

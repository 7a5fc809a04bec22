"""The LightNAS search space as data: the 22-layer layout and the op registry.

Every other file (supernet, standalone network, latency-table builder,
FLOPs/params tables) builds layers through this module, so the search space
has one definition (LightNAS paper, Section 3).

    >>> from operations import LAYOUT, SEARCHABLE_OPS, op
    >>> block = op("MBK5E6", 24, 48, stride=2)

Layer 0 is fixed to `MBK3E1`; layers 1..21 each choose one of the 7
`SEARCHABLE_OPS`, in the index order used by one-hot encodings, the authors'
latency MLP and the architecture parameters (a 21x7 matrix).
"""

import hashlib
import json
import re
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Standalone networks use these BatchNorm settings (the authors' release); the
# supernet reuses them with affine=False.
BN_MOMENTUM = 0.1
BN_EPS = 1e-3

# Squeeze-and-excitation reduces the hidden width by this factor.
SE_REDUCTION = 4

# Channel counts are rounded to multiples of this after width scaling.
CHANNEL_DIVISOR = 8


class LayerSpec(NamedTuple):
    """One row of the layout: a layer's shape, before width scaling."""

    in_channels: int
    out_channels: int
    stride: int
    input_size: int  # input height = width, for a 224x224 image


INPUT_SIZE = 224
STEM_CHANNELS = 16   # 3x3 conv, stride 2: 224 -> 112
HEAD_CHANNELS = 1984  # 1x1 conv after the last block
CLASSIFIER_HIDDEN = 1280  # Linear 1984 -> 1280 before the final Linear

# The 22 layers (the paper's search space). Layer 0 is fixed; 1..21 are searched.
LAYOUT = (
    LayerSpec(16, 16, 1, 112),    # 0: fixed MBK3E1, 112x112 in
    LayerSpec(16, 24, 2, 112),    # 1: stage 2, 112x112 in
    LayerSpec(24, 24, 1, 56),     # 2
    LayerSpec(24, 48, 2, 56),     # 3: stage 3, 56x56 in
    LayerSpec(48, 48, 1, 28),     # 4
    LayerSpec(48, 48, 1, 28),     # 5
    LayerSpec(48, 72, 2, 28),     # 6: stage 4, 28x28 in
    LayerSpec(72, 72, 1, 14),     # 7
    LayerSpec(72, 72, 1, 14),     # 8
    LayerSpec(72, 72, 1, 14),     # 9
    LayerSpec(72, 128, 1, 14),    # 10: stage 5, 14x14 in
    LayerSpec(128, 128, 1, 14),   # 11
    LayerSpec(128, 128, 1, 14),   # 12
    LayerSpec(128, 160, 2, 14),   # 13: stage 6, 14x14 in
    LayerSpec(160, 160, 1, 7),    # 14
    LayerSpec(160, 160, 1, 7),    # 15
    LayerSpec(160, 160, 1, 7),    # 16
    LayerSpec(160, 176, 1, 7),    # 17: stage 7, 7x7 in
    LayerSpec(176, 176, 1, 7),    # 18
    LayerSpec(176, 176, 1, 7),    # 19
    LayerSpec(176, 176, 1, 7),    # 20
    LayerSpec(176, 384, 1, 7),    # 21: last block, 7x7 in
)
NUM_LAYERS = len(LAYOUT)
NUM_SEARCHABLE_LAYERS = NUM_LAYERS - 1

FIXED_FIRST_OP = "MBK3E1"
SKIP = "SkipConnect"

# Index order matters: it is the column order of alpha and of every one-hot.
SEARCHABLE_OPS = ("MBK3E3", "MBK3E6", "MBK5E3", "MBK5E6", "MBK7E3", "MBK7E6", SKIP)
NUM_OPS = len(SEARCHABLE_OPS)

# The released "-SE" LightNets put SE on every MBConv from this layer on.
SE_FIRST_LAYER = 13

_MBCONV_NAME = re.compile(r"^MBK(?P<kernel>[357])E(?P<expansion>[136])(?P<se>SE)?$")


class MBConvConfig(NamedTuple):
    kernel_size: int
    expansion: int
    use_se: bool


def parse_mbconv(name):
    """Return the MBConvConfig an op name encodes, or None for SkipConnect
    and unknown names."""
    match = _MBCONV_NAME.match(name)
    if match is None:
        return None
    return MBConvConfig(int(match["kernel"]), int(match["expansion"]), match["se"] is not None)


def _registered_op_names():
    """Every op name `op()` accepts: the searchable ops, the fixed first op,
    their SE variants, and SkipConnect."""
    mbconvs = [name for name in SEARCHABLE_OPS if name != SKIP] + [FIXED_FIRST_OP]
    return tuple(mbconvs) + tuple(name + "SE" for name in mbconvs) + (SKIP,)


OP_NAMES = _registered_op_names()


def make_divisible(value, divisor=CHANNEL_DIVISOR):
    """Round `value` to the nearest multiple of `divisor`, never going below
    90% of it (the usual MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scaled_layout(width_mult=1.0):
    """LAYOUT with every channel count scaled by `width_mult`."""
    if width_mult == 1.0:
        return LAYOUT
    return tuple(
        spec._replace(
            in_channels=make_divisible(spec.in_channels * width_mult),
            out_channels=make_divisible(spec.out_channels * width_mult),
        )
        for spec in LAYOUT
    )


def stem_channels(width_mult=1.0):
    return make_divisible(STEM_CHANNELS * width_mult)


def head_channels(width_mult=1.0):
    # Like MobileNetV2's last layer, the head only ever grows with width.
    return make_divisible(HEAD_CHANNELS * max(1.0, width_mult))


def batch_norm(channels, affine=True):
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM, affine=affine)


def conv_bn_relu6(in_channels, out_channels, kernel_size, stride, affine=True):
    """Conv (bias-free, 'same' padding), BN, ReLU6: the stem, head and
    projecting-skip unit, kept as a Sequential so its children are named
    0, 1, 2 as in the released checkpoints."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        batch_norm(out_channels, affine),
        nn.ReLU6(inplace=True),
    )


def unreachable_taps(size, kernel, stride, padding):
    """How many kernel taps at each border of one dimension only ever meet
    the zero padding: those at the start that no output position shifts
    onto the input, and those at the end that lie beyond it even for the
    first output (the smaller of the two, so the cut is symmetric)."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    at_start = max(0, padding - stride * (outputs - 1))
    at_end = max(0, kernel - 1 - (size - 1 + padding))
    return min(at_start, at_end)


class DepthwiseConv2d(nn.Conv2d):
    """The depthwise conv of an MBConv, which skips the kernel taps that can
    only multiply padding.

    On a feature map smaller than the kernel (a 7x7 kernel on the 1x1 and
    2x2 maps that 32-64 px demo images leave in the last layers) the outer
    taps see zeros only; slicing them off gives the same output and cuts a
    CPU search step at 32 px by half. At 224 px no map is that small and
    nothing changes. Parameters and their names are nn.Conv2d's.
    """

    def forward(self, x):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Exported graphs keep the full kernel: the cut depends on the
            # input size, which a traced graph must not bake in.
            return super().forward(x)
        cut_h, cut_w = (unreachable_taps(size, kernel, stride, padding) for size, kernel, stride, padding in
                        zip(x.shape[-2:], self.kernel_size, self.stride, self.padding))
        if cut_h == cut_w == 0:
            return super().forward(x)
        weight = self.weight[:, :, cut_h:self.kernel_size[0] - cut_h, cut_w:self.kernel_size[1] - cut_w]
        padding = (self.padding[0] - cut_h, self.padding[1] - cut_w)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


class SqueezeExcite(nn.Module):
    """Channel gating: pool, reduce, ReLU, expand, sigmoid, multiply.

    The layers live in `self.se` so checkpoint names are `se.1.weight` and
    `se.3.weight`, as released.
    """

    def __init__(self, channels):
        super().__init__()
        reduced = max(1, channels // SE_REDUCTION)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.se(x)


class MBConv(nn.Module):
    """MobileNetV2 inverted residual with kernel k and expansion e.

    `main` holds, in order: [1x1 expand, BN, ReLU6] (only when e > 1),
    kxk depthwise, BN, [SE], ReLU6, 1x1 project, BN. The residual is added
    only when the block keeps the shape.
    """

    def __init__(self, in_channels, out_channels, stride, config, affine=True):
        super().__init__()
        hidden = round(in_channels * config.expansion)
        layers = []
        if config.expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                batch_norm(hidden, affine),
                nn.ReLU6(inplace=True),
            ]
        kernel = config.kernel_size
        layers += [
            DepthwiseConv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            batch_norm(hidden, affine),
        ]
        if config.use_se:
            layers.append(SqueezeExcite(hidden))
        layers += [
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            batch_norm(out_channels, affine),
        ]
        self.main = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.main(x)
        return x + out if self.use_residual else out


class SkipConnect(nn.Module):
    """Identity when the shape is kept, else a strided 1x1 conv-BN-ReLU6
    projection (in `self.op`, so an identity skip has no parameters)."""

    def __init__(self, in_channels, out_channels, stride, affine=True):
        super().__init__()
        if stride == 1 and in_channels == out_channels:
            self.op = nn.Identity()
        else:
            self.op = conv_bn_relu6(in_channels, out_channels, 1, stride, affine)

    def forward(self, x):
        return self.op(x)


def op(name, in_channels, out_channels, stride, affine=True):
    """Build the registered op `name`; `affine=False` gives the supernet's
    BatchNorm without learnable scale and shift."""
    if name == SKIP:
        return SkipConnect(in_channels, out_channels, stride, affine)
    config = parse_mbconv(name)
    if config is None or name not in OP_NAMES:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(OP_NAMES)}")
    return MBConv(in_channels, out_channels, stride, config, affine)


def with_se(name):
    """The SE variant of an MBConv op name; SkipConnect has none."""
    return name if name == SKIP or name.endswith("SE") else name + "SE"


def arch_to_indices(arch_config):
    """The searchable part of an arch_config as op indices (21 ints).

    Takes the full 22-name list (layer 0 is dropped) or the 21 searchable
    names. SE variants are not part of the searched space and are refused.
    """
    names = list(arch_config)
    if len(names) == NUM_LAYERS:
        if names[0] != FIXED_FIRST_OP:
            raise ValueError(f"layer 0 must be {FIXED_FIRST_OP}, got {names[0]!r}")
        names = names[1:]
    if len(names) != NUM_SEARCHABLE_LAYERS:
        raise ValueError(f"expected {NUM_LAYERS} or {NUM_SEARCHABLE_LAYERS} op names, got {len(names)}")
    unknown = [name for name in names if name not in SEARCHABLE_OPS]
    if unknown:
        raise ValueError(f"not searchable ops: {', '.join(sorted(set(unknown)))}; "
                         f"searchable: {', '.join(SEARCHABLE_OPS)}")
    return [SEARCHABLE_OPS.index(name) for name in names]


def indices_to_arch(indices):
    """The full 22-name arch_config for 21 op indices."""
    return [FIXED_FIRST_OP] + [SEARCHABLE_OPS[int(index)] for index in indices]


def search_space_hash():
    """A short, stable fingerprint of the search space. Latency tables and
    search checkpoints store it, so data made for another space is refused."""
    description = {
        "layout": [list(spec) for spec in LAYOUT],
        "stem": STEM_CHANNELS,
        "head": HEAD_CHANNELS,
        "classifier_hidden": CLASSIFIER_HIDDEN,
        "fixed_first_op": FIXED_FIRST_OP,
        "searchable_ops": list(SEARCHABLE_OPS),
    }
    encoded = json.dumps(description, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]

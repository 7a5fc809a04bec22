"""The standalone LightNet built from an `arch_config`, and the twelve
released LightNets (LightNAS README).

An `arch_config` names one op per layer (22 names, the first `MBK3E1` or
`MBK3E1SE`). It may be given as a Python list, as the string form of the
authors' commands, as a JSON file written by the search, or as a registered
name such as `LightNet-24ms`. Parameter names and shapes equal those of the
authors' released checkpoints, which therefore load with `strict=True`.

Print a network's layers, parameters and FLOPs:

    python3 model_train.py --arch_config LightNet-24ms
"""

import argparse
import ast
import copy
import math
import os
import warnings

import torch
from torch import nn

import operations
from operations import FIXED_FIRST_OP, NUM_LAYERS, OP_NAMES, SE_FIRST_LAYER
from utils import MAX_CLASSES, MAX_WIDTH_MULT, UserError, read_json, refuse_link_loop, run_cli

DEFAULT_DROPOUT = 0.2  # the paper's retraining recipe
IMAGENET_CLASSES = 1000

# The six searched networks, from the authors' training commands (README).
_LIGHTNETS = {
    "LightNet-20ms": "SkipConnect MBK3E3 MBK3E6 MBK7E3 MBK3E3 MBK5E3 MBK7E3 MBK3E6 MBK3E3 MBK7E6 "
                     "MBK5E3 MBK7E6 MBK7E3 MBK5E3 MBK7E3 SkipConnect MBK5E3 MBK7E3 MBK7E3 MBK3E6 MBK7E6",
    "LightNet-22ms": "MBK7E6 SkipConnect MBK7E6 MBK3E6 SkipConnect SkipConnect MBK5E3 MBK7E6 MBK7E6 MBK7E3 "
                     "MBK7E3 SkipConnect MBK7E3 MBK7E6 MBK7E6 SkipConnect MBK5E6 MBK7E3 MBK7E3 MBK7E3 MBK5E6",
    "LightNet-24ms": "MBK3E3 MBK7E6 MBK3E3 MBK5E6 MBK5E6 MBK7E3 MBK3E6 SkipConnect MBK7E6 MBK3E6 "
                     "MBK3E3 MBK7E3 MBK5E3 MBK7E3 SkipConnect SkipConnect MBK7E3 MBK7E3 MBK5E3 MBK5E6 MBK3E6",
    "LightNet-26ms": "SkipConnect MBK7E6 MBK7E6 MBK3E6 MBK7E6 MBK3E3 MBK5E3 MBK5E6 MBK7E6 MBK3E6 "
                     "SkipConnect MBK7E6 MBK7E6 MBK7E6 MBK3E3 MBK5E6 MBK5E3 SkipConnect MBK5E6 MBK7E3 MBK5E6",
    "LightNet-28ms": "MBK5E3 MBK7E6 MBK3E3 MBK7E6 MBK5E6 MBK5E6 MBK5E3 MBK5E3 MBK3E6 MBK7E3 "
                     "MBK3E3 MBK7E6 MBK3E3 MBK7E6 MBK7E3 SkipConnect MBK5E6 MBK5E6 MBK7E6 MBK5E6 MBK7E6",
    "LightNet-30ms": "MBK3E6 MBK7E3 MBK3E6 MBK7E6 MBK7E6 MBK3E3 MBK3E6 MBK3E3 MBK7E6 MBK5E6 "
                     "MBK7E6 MBK7E6 MBK7E3 SkipConnect MBK7E6 MBK7E6 MBK5E6 SkipConnect MBK7E6 MBK7E6 MBK3E6",
}


def _add_se_from(arch_config, first_layer):
    """The "-SE" variant: SE on every MBConv from `first_layer` on."""
    return [
        operations.with_se(name) if index >= first_layer else name
        for index, name in enumerate(arch_config)
    ]


def _registry():
    networks = {}
    for name, searched_layers in _LIGHTNETS.items():
        arch_config = [FIXED_FIRST_OP] + searched_layers.split()
        networks[name] = arch_config
        networks[name + "-SE"] = _add_se_from(arch_config, SE_FIRST_LAYER)
    return networks


LIGHTNETS = _registry()

# Published results (the authors' README): latency measured on Jetson
# AGX Xavier (batch 8) and ImageNet top-1/top-5 of the released weights.
README_LATENCY_MS = {"LightNet-20ms": 20.0, "LightNet-22ms": 22.1, "LightNet-24ms": 23.9,
                     "LightNet-26ms": 26.1, "LightNet-28ms": 28.2, "LightNet-30ms": 30.1}
README_ACCURACY = {"LightNet-20ms": (75.0, 92.2), "LightNet-22ms": (75.2, 92.2),
                   "LightNet-24ms": (75.5, 92.3), "LightNet-26ms": (75.9, 92.6),
                   "LightNet-28ms": (76.1, 92.7), "LightNet-30ms": (76.4, 92.9)}
# The released weights evaluated exactly on the 50,000 ImageNet val images
# (top-1, top-5), for the twelve networks (the authors' release).
EXACT_ACCURACY = {"LightNet-20ms": (74.996, 92.170), "LightNet-22ms": (75.230, 92.192),
                  "LightNet-24ms": (75.492, 92.342), "LightNet-26ms": (75.870, 92.576),
                  "LightNet-28ms": (76.068, 92.674), "LightNet-30ms": (76.392, 92.924),
                  "LightNet-20ms-SE": (75.350, 92.250), "LightNet-22ms-SE": (76.066, 92.466),
                  "LightNet-24ms-SE": (75.878, 92.574), "LightNet-26ms-SE": (76.306, 92.840),
                  "LightNet-28ms-SE": (76.524, 92.846), "LightNet-30ms-SE": (76.990, 93.106)}


# ---------------------------------------------------------- arch_config input


def _parse_list_string(text):
    """Parse "['MBK3E1', 'SkipConnect', ...]" (Python or JSON quoting) as a
    literal: nothing in the string is ever executed."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise UserError(
            "--arch_config: could not parse the list; write it as "
            "\"['MBK3E1', 'SkipConnect', ...]\" with 22 quoted op names"
        ) from None
    return value


def _load_arch_json(path):
    """Read the search's `arch.json` ({"arch_config": [...], ...}) or a
    plain JSON list."""
    content = read_json(path, "--arch_config:")
    if isinstance(content, dict):
        if "arch_config" not in content:
            raise UserError(f"--arch_config: {path} has no 'arch_config' key")
        return content["arch_config"]
    return content


def validate_arch_config(arch_config):
    """Check names, length and the fixed first layer; return a list."""
    if not isinstance(arch_config, (list, tuple)) or not all(isinstance(name, str) for name in arch_config):
        raise UserError("--arch_config: expected a list of op names, e.g. ['MBK3E1', 'SkipConnect', ...]")
    arch_config = list(arch_config)
    if len(arch_config) != NUM_LAYERS:
        raise UserError(f"--arch_config: expected {NUM_LAYERS} op names (layer 0 = {FIXED_FIRST_OP}), "
                        f"got {len(arch_config)}")
    for index, name in enumerate(arch_config):
        if name not in OP_NAMES:
            raise UserError(f"--arch_config: layer {index} has unknown op {name!r}; "
                            f"valid ops: {', '.join(OP_NAMES)}")
    first_ops = (FIXED_FIRST_OP, operations.with_se(FIXED_FIRST_OP))
    if arch_config[0] not in first_ops:
        raise UserError(f"--arch_config: layer 0 must be {FIXED_FIRST_OP} (or {first_ops[1]}), "
                        f"got {arch_config[0]!r}")
    for index, name in enumerate(arch_config[1:], start=1):
        if name in first_ops:
            raise UserError(f"--arch_config: {name} is only allowed at layer 0, found at layer {index}")
    return arch_config


def recorded_arch_config(value, path):
    """The architecture a checkpoint at `path` records, checked; a damaged
    record is named as the file's, not as an option the user never gave."""
    try:
        return validate_arch_config(value)
    except UserError as error:
        raise UserError(f"{path} records an architecture that is not valid "
                        f"({str(error).removeprefix('--arch_config: ')}); give --arch_config, or use another "
                        "checkpoint") from None


def resolve_arch_config(value):
    """Turn any accepted form of `--arch_config` into a validated list:
    a list, a registered name, a JSON file, or the list's string form."""
    if isinstance(value, (list, tuple)):
        return validate_arch_config(value)
    if not isinstance(value, str):
        raise UserError(f"--arch_config: unsupported value of type {type(value).__name__}")
    text = value.strip()
    if text in LIGHTNETS:
        return list(LIGHTNETS[text])
    if text.startswith("["):
        return validate_arch_config(_parse_list_string(text))
    if os.path.exists(text):  # read_json refuses a folder, a device or a pipe in one line
        return validate_arch_config(_load_arch_json(text))
    refuse_link_loop(text, "--arch_config:")  # looks missing to os.path.exists, whatever its name
    if text.endswith(".json"):
        raise UserError(f"--arch_config: file {text} not found")
    raise UserError(f"--arch_config: {text!r} is neither a registered network ({', '.join(LIGHTNETS)}), "
                    f"a JSON file, nor a list like \"['MBK3E1', ...]\"")


# ------------------------------------------------------------------- network


class LightNet(nn.Module):
    """A standalone network of the LightNAS space.

    Children and their names follow the released checkpoints: `first_conv`,
    `blocks.{0..21}`, `last_conv`, `classifier` (Linear, BatchNorm1d, ReLU6,
    Dropout, Linear).
    """

    def __init__(self, arch_config, num_classes=IMAGENET_CLASSES, width_mult=1.0, dropout=DEFAULT_DROPOUT,
                 zero_init_residual=False):
        super().__init__()
        self.arch_config = validate_arch_config(arch_config)
        layout = operations.scaled_layout(width_mult)
        self.first_conv = operations.conv_bn_relu6(3, operations.stem_channels(width_mult), 3, stride=2)
        self.blocks = nn.ModuleList(
            operations.op(name, spec.in_channels, spec.out_channels, spec.stride)
            for name, spec in zip(self.arch_config, layout)
        )
        head = operations.head_channels(width_mult)
        self.last_conv = operations.conv_bn_relu6(layout[-1].out_channels, head, 1, stride=1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head, operations.CLASSIFIER_HIDDEN, bias=False),
            nn.BatchNorm1d(operations.CLASSIFIER_HIDDEN),
            nn.ReLU6(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(operations.CLASSIFIER_HIDDEN, num_classes),
        )
        initialize_weights(self)
        if zero_init_residual:
            zero_residual_branches(self)

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.last_conv(x)
        x = self.global_pool(x).flatten(1)
        return self.classifier(x)


def initialize_weights(model):
    """He fan-out normal for convs (n = k*k*out/groups), BN to identity,
    Linear biases to zero (as the authors' release)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            fan_out = kernel_h * kernel_w * module.out_channels / module.groups
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def zero_residual_branches(model):
    """Start every residual MBConv as the identity: its branch's last
    BatchNorm scale set to 0 (Goyal et al., 2017). Not in the paper or the
    release; the short CPU retraining (retraining.py) uses it because at 32 px
    a network of 22 blocks otherwise sits at the chance loss for several
    epochs and climbs out at a seed-dependent time."""
    for module in model.modules():
        if isinstance(module, operations.MBConv) and module.use_residual:
            nn.init.zeros_(module.main[-1].weight)


def build_lightnet(arch_config, **kwargs):
    """Build a LightNet from any accepted form of `arch_config`."""
    return LightNet(resolve_arch_config(arch_config), **kwargs)


def count_macs(module, input_shape, device="cpu"):
    """Multiply-accumulates of one image through `module`, as thop counts
    them (thop calls MACs "FLOPs", and so do the LightNAS tables). thop
    finds its counter by exact module type, so the depthwise conv subclass
    is named to it."""
    with warnings.catch_warnings():  # thop's own use of a deprecated module: not the user's to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        from thop import profile  # imported here: only summaries and count tables need it
        from thop.vision.basic_hooks import count_convNd

    image = torch.zeros(1, *input_shape, device=device)
    macs, _ = profile(module, inputs=(image,), custom_ops={operations.DepthwiseConv2d: count_convNd},
                      verbose=False)
    return int(macs)


def count_params_and_flops(model, input_size=operations.INPUT_SIZE):
    """Parameters and multiply-accumulates of one image at `input_size`."""
    # thop attaches counters to the modules it profiles: work on a copy so
    # the caller's model and its state_dict stay clean.
    probe = copy.deepcopy(model).cpu().eval()
    params = sum(parameter.numel() for parameter in model.parameters())
    return params, count_macs(probe, (3, input_size, input_size))


def describe(arch_config, width_mult=1.0):
    """One line per layer: index, op, channels, stride, input size."""
    lines = [f"{'layer':>5}  {'op':<12} {'in->out':>9}  stride  input"]
    for index, (name, spec) in enumerate(zip(arch_config, operations.scaled_layout(width_mult))):
        channels = f"{spec.in_channels}->{spec.out_channels}"
        lines.append(f"{index:>5}  {name:<12} {channels:>9}  {spec.stride:>6}  {spec.input_size}x{spec.input_size}")
    return "\n".join(lines)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Print a LightNet's layers, parameters and FLOPs.")
    parser.add_argument("--arch_config", required=True,
                        help="a registered name (" + ", ".join(LIGHTNETS) + "), the list string "
                             "\"['MBK3E1', ...]\", or the search's arch.json")
    parser.add_argument("--num_classes", type=int, default=IMAGENET_CLASSES, help="classifier outputs (default: 1000)")
    parser.add_argument("--width_mult", type=float, default=1.0, help="channel width multiplier (default: 1.0)")
    return parser


def main(args):
    if not 1 <= args.num_classes <= MAX_CLASSES:
        raise UserError(f"--num_classes must be in [1, {MAX_CLASSES}]")
    if not 0 < args.width_mult <= MAX_WIDTH_MULT:
        raise UserError(f"--width_mult must be in (0, {MAX_WIDTH_MULT:g}], got {args.width_mult}")
    arch_config = resolve_arch_config(args.arch_config)
    model = LightNet(arch_config, num_classes=args.num_classes, width_mult=args.width_mult)
    params, macs = count_params_and_flops(model)
    print(describe(arch_config, args.width_mult))
    print(f"Params: {params / 1e6:.2f} M ({params:,})")
    print(f"FLOPs: {macs / 1e6:.1f} M ({macs:,} multiply-accumulates at "
          f"{operations.INPUT_SIZE}x{operations.INPUT_SIZE}, counted by thop)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())

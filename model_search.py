"""The LightNAS supernet: 21 searchable layers x 7 ops, single path, with
hard Gumbel-softmax architecture weights (paper Section 3).

Each step samples one op per layer; only the sampled ops run, so a step costs
what one sampled network costs. When the architecture parameters `alpha`
(21x7) need a gradient, every entry of each layer's one-hot row enters the
layer's output, as in the authors' release: the chosen entry multiplies the
chosen op's output, the others are added as terms that are exactly zero.
The forward pass is unchanged; through the straight-through estimator the
chosen entry receives sum(dL/dout * op(x)) and each other entry sum(dL/dout).

    >>> net = SuperNet(num_classes=100)
    >>> weights = gumbel_softmax_hard(net.alpha, tau=5.0)   # 21x7 one-hot
    >>> logits = net(images, weights)
    >>> net.derive()   # the argmax arch_config, 22 names
"""

import torch
import torch.nn.functional as F
from torch import nn

import operations
from operations import NUM_OPS, NUM_SEARCHABLE_LAYERS, SEARCHABLE_OPS

ALPHA_INIT_SCALE = 1e-3  # alpha ~ 1e-3 * N(0, 1) (paper Section 4)
# The authors' supernet keeps PyTorch's BatchNorm eps; the standalone
# networks use 1e-3 (operations.BN_EPS).
SUPERNET_BN_EPS = 1e-5
# Where the eta shortcut paths go: every searchable layer, as in the
# release; or, beyond the paper, only the layers that keep their
# input's shape (there the path is the identity, while on a stride-2 or
# channel-changing layer it is a pooled 1x1 conv that stands in for the op,
# so a SkipConnect there looks nearly free to the supernet); or only the
# layers that change it (on a same-shape layer the identity path adds eta * x
# to a stream that already carries x through the op's residual, so the
# stream grows (1 + eta) times per layer and a later layer's op is a
# vanishing share of it).
SHORTCUT_LAYERS = ("all", "same_shape", "shape_changing")
# How the eta path downsamples on a stride-2 layer: 2x2 max pooling, as in
# the release; or, beyond the paper, every second pixel of every second row,
# which is what a SkipConnect there keeps (a strided 1x1 conv). Max pooling
# hands the next layer a summary of all four positions whatever op was
# chosen, so a skip on a stride-2 layer costs the supernet little; the
# retrained network, which has no such path, loses three quarters of the
# positions there.
SHORTCUT_POOLINGS = ("max", "subsample")
# A forbidden op's logit: its probability is exactly 0 in float32 softmax,
# while the arithmetic stays finite (Gumbel noise and 1/tau are added to it).
FORBIDDEN_LOGIT = -1e4


def strided_skip_mask():
    """21x7 booleans, True at SkipConnect on the stride-2 layers: the ops
    that `--strided_skips forbid` (beyond the paper) takes out of the space."""
    mask = torch.zeros(NUM_SEARCHABLE_LAYERS, NUM_OPS, dtype=torch.bool)
    skip = SEARCHABLE_OPS.index(operations.SKIP)
    for layer, spec in enumerate(operations.LAYOUT[1:]):
        mask[layer, skip] = spec.stride == 2
    return mask


def gumbel_softmax_hard(alpha, tau, generator=None):
    """A hard one-hot sample per row of `alpha`, straight-through.

    Forward: the one-hot of argmax(log_softmax(alpha) + g), g ~ Gumbel(0, 1).
    Backward: the gradient of softmax((log_softmax(alpha) + g) / tau).
    `generator` makes the noise reproducible and equal on every process.
    """
    uniform = torch.rand(alpha.shape, generator=generator, device=alpha.device, dtype=alpha.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(alpha.dtype).tiny)))
    soft = F.softmax((F.log_softmax(alpha, dim=-1) + gumbel) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), alpha.size(-1)).to(soft.dtype)
    return hard - soft.detach() + soft


def one_hot_paths(indices, device=None):
    """Constant one-hot weights (no gradient) for given op indices (21)."""
    indices = torch.as_tensor(indices, device=device)
    return F.one_hot(indices, NUM_OPS).float()


def warmup_paths(generator=None):
    """Seven paths that together run every op of every layer once: per
    layer, the ops in a random order without replacement (a 7x21 tensor of
    op indices, one row per path)."""
    orders = [torch.randperm(NUM_OPS, generator=generator) for _ in range(NUM_SEARCHABLE_LAYERS)]
    return torch.stack(orders, dim=1)


def unchosen_entries(row, chosen):
    """The sum of a one-hot row's entries other than `chosen`: exactly 0 in
    the forward pass (each is (0 - soft) + soft), 1 in each one's gradient."""
    return torch.cat([row[:chosen], row[chosen + 1:]]).sum()


class Subsample2d(nn.Module):
    """Every second pixel of every second row: a strided 1x1 conv's view of
    its input (odd sizes round up: 5 -> 3, 1 -> 1, as the strided ops)."""

    def forward(self, x):
        return x[:, :, ::2, ::2]


def identity_shortcut(spec, pooling="max"):
    """The release's shared shortcut (its `eta` option): a 1x1 conv and BN
    where the channels change, then, where the layer strides, 2x2 max pooling
    (the release's) or `pooling="subsample"` (see SHORTCUT_POOLINGS);
    nothing where the layer keeps the shape."""
    modules = []
    if spec.in_channels != spec.out_channels:
        modules += [nn.Conv2d(spec.in_channels, spec.out_channels, 1, bias=False),
                    operations.batch_norm(spec.out_channels, affine=False)]
    if spec.stride != 1:
        # ceil_mode matches the strided ops' output size on odd maps (5 -> 3,
        # 1 -> 1); on even maps it is the release's plain 2x2 pooling.
        modules.append(nn.MaxPool2d(2, 2, ceil_mode=True) if pooling == "max" else Subsample2d())
    return nn.Sequential(*modules)


class SearchableLayer(nn.Module):
    """One layer's 7 candidate ops; runs only the one selected. With
    `shortcut`, the layer also has the release's op-independent path, added
    to the op's output with weight eta (a layer without one ignores eta)."""

    def __init__(self, spec, shortcut=False, pooling="max"):
        super().__init__()
        self.candidates = nn.ModuleList(
            operations.op(name, spec.in_channels, spec.out_channels, spec.stride, affine=False)
            for name in SEARCHABLE_OPS
        )
        self.shortcut = identity_shortcut(spec, pooling) if shortcut else None

    def forward(self, x, op_index, row=None, eta=0.0):
        out = self.candidates[op_index](x)
        # Skipped when alpha needs no gradient, so a weight step costs one
        # plain network.
        if row is not None:
            out = out * row[op_index] + unchosen_entries(row, op_index)
        if eta and self.shortcut is not None:
            out = out + eta * self.shortcut(x)
        return out


class SuperNet(nn.Module):
    """Stem, fixed layer 0, 21 searchable layers, head, classifier.

    BatchNorm has no affine parameters (running statistics are kept) and eps
    1e-5, the classifier has no BatchNorm1d, and the weights are initialised
    as in the authors' release: He normal (fan-out) convolutions, N(0, 0.01)
    linear weights, zero biases. `shortcuts=True` adds the release's eta
    paths (see `identity_shortcut`; `shortcut_layers` and `shortcut_pooling`
    choose where they are and how they downsample); forward's `eta` weighs them.
    """

    def __init__(self, num_classes, width_mult=1.0, dropout=0.2, shortcuts=False, shortcut_layers="all",
                 shortcut_pooling="max", forbidden=None):
        super().__init__()
        layout = operations.scaled_layout(width_mult)
        self.first_conv = operations.conv_bn_relu6(
            3, operations.stem_channels(width_mult), 3, stride=2, affine=False)
        first = layout[0]
        self.first_block = operations.op(
            operations.FIXED_FIRST_OP, first.in_channels, first.out_channels, first.stride, affine=False)
        if shortcut_layers not in SHORTCUT_LAYERS:
            raise ValueError(f"shortcut_layers must be one of {SHORTCUT_LAYERS}, got {shortcut_layers!r}")
        if shortcut_pooling not in SHORTCUT_POOLINGS:
            raise ValueError(f"shortcut_pooling must be one of {SHORTCUT_POOLINGS}, got {shortcut_pooling!r}")
        self.layers = nn.ModuleList(
            SearchableLayer(spec, shortcuts and (shortcut_layers == "all"
                                                 or keeps_shape(spec) == (shortcut_layers == "same_shape")),
                            shortcut_pooling)
            for spec in layout[1:])
        head = operations.head_channels(width_mult)
        self.last_conv = operations.conv_bn_relu6(layout[-1].out_channels, head, 1, stride=1, affine=False)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head, operations.CLASSIFIER_HIDDEN, bias=False),
            nn.ReLU6(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(operations.CLASSIFIER_HIDDEN, num_classes),
        )
        initialize_supernet(self)
        # Registered, so it is saved with the model; kept out of
        # weight_parameters() so the two optimizers never overlap.
        self.alpha = nn.Parameter(ALPHA_INIT_SCALE * torch.randn(NUM_SEARCHABLE_LAYERS, NUM_OPS))
        # Ops taken out of the space (None: every op allowed); not saved in
        # the state dict, so checkpoints keep the release's keys.
        self.register_buffer("forbidden", forbidden, persistent=False)

    def arch_logits(self, alpha=None):
        """alpha (or a saved copy of it) with the forbidden ops' entries at
        FORBIDDEN_LOGIT: what sampling, probabilities and the argmax read
        (gradients reach the allowed entries only)."""
        alpha = self.alpha if alpha is None else alpha
        if self.forbidden is None:
            return alpha
        return alpha.masked_fill(self.forbidden, FORBIDDEN_LOGIT)

    def arch_parameters(self):
        return [self.alpha]

    def weight_parameters(self):
        return [parameter for name, parameter in self.named_parameters() if name != "alpha"]

    def forward(self, x, weights, eta=0.0):
        """Run the path that `weights` (21x7, one-hot rows) selects. If
        `weights` requires grad, the output is differentiable in it."""
        if eta and all(layer.shortcut is None for layer in self.layers):
            raise ValueError(f"eta={eta} needs the shortcut paths: build SuperNet(..., shortcuts=True)")
        op_indices = weights.argmax(dim=-1).tolist()  # one device sync per step
        route_gradient = weights.requires_grad
        x = self.first_block(self.first_conv(x))
        for layer, row, op_index in zip(self.layers, weights, op_indices):
            x = layer(x, op_index, row if route_gradient else None, eta)
        x = self.global_pool(self.last_conv(x)).flatten(1)
        return self.classifier(x)

    def op_probabilities(self):
        """softmax(alpha) per layer, a 21x7 tensor without gradient."""
        return F.softmax(self.arch_logits().detach(), dim=-1)

    def derive_indices(self):
        return self.arch_logits().detach().argmax(dim=-1).tolist()

    def derive(self):
        """The argmax architecture: 22 op names, `MBK3E1` first."""
        return operations.indices_to_arch(self.derive_indices())


def keeps_shape(spec):
    return spec.stride == 1 and spec.in_channels == spec.out_channels


def initialize_supernet(model):
    """The release's supernet initialisation and BatchNorm eps. PyTorch's
    fan-out of a depthwise conv counts every output channel (k*k*C, not
    k*k), so those start smaller than in the standalone networks."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.eps = SUPERNET_BN_EPS


def batchnorm_layers(model):
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


@torch.no_grad()
def path_top1(supernet, indices, eta, calibration_loader, val_loader, calibration_batches):
    """Top-1 (%) of one path (21 op indices) with the supernet's shared
    weights, after recomputing BatchNorm's statistics for that path on
    `calibration_batches` batches of `calibration_loader` (the supernet's
    running statistics mix every path it trained, so a path scored with them
    is judged on other paths' statistics; single-path one-shot NAS
    recalibrates the same way). The supernet is left as it was found."""
    device = next(supernet.parameters()).device
    paths = one_hot_paths(indices, device=device)
    layers = batchnorm_layers(supernet)
    saved = [(layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone(),
              layer.momentum) for layer in layers]
    was_training = supernet.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over the calibration batches
    supernet.train()
    for batch, (images, _) in enumerate(calibration_loader):
        if batch == calibration_batches:
            break
        supernet(images.to(device), paths, eta)
    supernet.eval()
    correct = total = 0
    for images, targets in val_loader:
        predictions = supernet(images.to(device), paths, eta).argmax(dim=1)
        correct += int((predictions == targets.to(device)).sum())
        total += targets.numel()
    for layer, (mean, var, count, momentum) in zip(layers, saved):
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        layer.num_batches_tracked.copy_(count)
        layer.momentum = momentum
    supernet.train(was_training)
    return 100.0 * correct / total

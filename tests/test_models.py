"""The search space, the registered LightNets and the arch_config input."""

import json

import pytest
import torch

import model_train
import operations
from model_train import LIGHTNETS, LightNet, resolve_arch_config
from utils import UserError, run_cli

SMALL_INPUT = 64  # every layer works at any multiple of 32; keeps tests fast


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_layout_matches_spec():
    assert len(operations.LAYOUT) == 22
    assert operations.SEARCHABLE_OPS == ("MBK3E3", "MBK3E6", "MBK5E3", "MBK5E6", "MBK7E3", "MBK7E6", "SkipConnect")
    # channels chain from layer to layer and resolution halves at each stride 2
    size = 112
    for previous, spec in zip(operations.LAYOUT, operations.LAYOUT[1:]):
        assert spec.in_channels == previous.out_channels
        size //= previous.stride
        assert spec.input_size == size
    assert [i for i, spec in enumerate(operations.LAYOUT) if spec.stride == 2] == [1, 3, 6, 13]
    assert operations.LAYOUT[-1].out_channels == 384


def test_op_registry_names():
    assert len(operations.OP_NAMES) == 15  # 7 MBConvs, their 7 SE twins, SkipConnect
    assert "MBK3E1SE" in operations.OP_NAMES and "MBK7E6SE" in operations.OP_NAMES
    with pytest.raises(KeyError, match="unknown op"):
        operations.op("MBK5E1", 16, 16, 1)


@pytest.mark.parametrize("name", operations.OP_NAMES)
def test_every_op_builds_with_expected_shape(name):
    stride_two = operations.op(name, 16, 24, stride=2)
    assert stride_two(torch.randn(2, 16, 16, 16)).shape == (2, 24, 8, 8)


def test_mbconv_structure_and_residual():
    block = operations.op("MBK5E6", 24, 24, stride=1)
    kinds = [type(layer).__name__ for layer in block.main]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU6", "DepthwiseConv2d", "BatchNorm2d", "ReLU6", "Conv2d", "BatchNorm2d"]
    assert block.main[0].out_channels == 144 and block.main[3].kernel_size == (5, 5)
    assert block.main[3].groups == 144
    assert block.use_residual
    assert not operations.op("MBK5E6", 24, 48, stride=1).use_residual
    assert not operations.op("MBK5E6", 24, 24, stride=2).use_residual
    # expansion 1 has no expand conv; SE sits after the depthwise BN
    first = operations.op("MBK3E1SE", 16, 16, stride=1)
    kinds = [type(layer).__name__ for layer in first.main]
    assert kinds == ["DepthwiseConv2d", "BatchNorm2d", "SqueezeExcite", "ReLU6", "Conv2d", "BatchNorm2d"]
    bn = first.main[1]
    assert (bn.momentum, bn.eps) == (0.1, 1e-3)


def test_supernet_ops_have_no_affine_batchnorm():
    block = operations.op("MBK3E3", 24, 48, stride=2, affine=False)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert not module.affine and module.track_running_stats


def test_make_divisible_and_width_mult():
    assert operations.make_divisible(16 * 0.5) == 8
    assert operations.make_divisible(72 * 1.3) == 96  # 93.6 rounds to 96
    assert operations.make_divisible(24 * 0.35) == 8  # never below the divisor
    layout = operations.scaled_layout(0.5)
    assert all(spec.in_channels % 8 == 0 and spec.out_channels % 8 == 0 for spec in layout)
    net = LightNet(LIGHTNETS["LightNet-20ms"], num_classes=5, width_mult=0.5)
    assert net(torch.randn(2, 3, SMALL_INPUT, SMALL_INPUT)).shape == (2, 5)


def test_twelve_networks_registered_with_se_from_layer_13():
    names = [f"LightNet-{latency}ms" for latency in range(20, 31, 2)]
    assert set(LIGHTNETS) == set(names) | {name + "-SE" for name in names}
    plain, with_se = LIGHTNETS["LightNet-20ms"], LIGHTNETS["LightNet-20ms-SE"]
    assert plain[:2] == ["MBK3E1", "SkipConnect"] and plain[-1] == "MBK7E6"
    assert with_se[:13] == plain[:13]
    assert with_se[13:] == [name if name == "SkipConnect" else name + "SE" for name in plain[13:]]


@pytest.mark.parametrize("name", sorted(LIGHTNETS))
def test_registered_lightnet_forward_and_gradients(name):
    model = LightNet(LIGHTNETS[name], num_classes=10)
    model.train()
    logits = model(torch.randn(2, 3, SMALL_INPUT, SMALL_INPUT))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_state_dict_follows_released_naming():
    state = LightNet(LIGHTNETS["LightNet-20ms"]).state_dict()
    # layer 1 is a projecting SkipConnect (16 -> 24, stride 2)
    assert state["blocks.1.op.0.weight"].shape == (24, 16, 1, 1)
    assert "blocks.1.op.1.running_mean" in state
    # layer 16 is an identity SkipConnect: no parameters at all
    assert not any(key.startswith("blocks.16.") for key in state)
    # layer 0 (MBK3E1): depthwise 16, project 16 -> 16
    assert state["blocks.0.main.0.weight"].shape == (16, 1, 3, 3)
    assert state["blocks.0.main.3.weight"].shape == (16, 16, 1, 1)
    # layer 21 (MBK7E6, 176 -> 384): expand to 1056, depthwise 7x7
    assert state["blocks.21.main.0.weight"].shape == (1056, 176, 1, 1)
    assert state["blocks.21.main.3.weight"].shape == (1056, 1, 7, 7)
    assert state["blocks.21.main.6.weight"].shape == (384, 1056, 1, 1)
    assert state["first_conv.0.weight"].shape == (16, 3, 3, 3)
    assert state["last_conv.0.weight"].shape == (1984, 384, 1, 1)
    assert state["classifier.0.weight"].shape == (1280, 1984)
    assert "classifier.0.bias" not in state
    assert "classifier.1.running_mean" in state
    assert state["classifier.4.weight"].shape == (1000, 1280)
    assert state["classifier.4.bias"].shape == (1000,)


def test_state_dict_se_naming():
    state = LightNet(LIGHTNETS["LightNet-20ms-SE"]).state_dict()
    # layer 13 is MBK7E3SE with 128 -> 384 hidden: SE at main.5, reduction 4
    assert state["blocks.13.main.5.se.1.weight"].shape == (96, 384, 1, 1)
    assert state["blocks.13.main.5.se.3.weight"].shape == (384, 96, 1, 1)
    assert state["blocks.13.main.7.weight"].shape == (160, 384, 1, 1)
    assert not any(".se." in key for key in state if int(key.split(".")[1]) < 13 and key.startswith("blocks."))


def test_released_format_loads_strictly():
    source = LightNet(LIGHTNETS["LightNet-26ms-SE"])
    released = {"module." + key: value for key, value in source.state_dict().items()}
    from utils import strip_module_prefix

    target = LightNet(LIGHTNETS["LightNet-26ms-SE"])
    target.load_state_dict(strip_module_prefix(released), strict=True)
    assert torch.equal(target.state_dict()["blocks.21.main.0.weight"], source.state_dict()["blocks.21.main.0.weight"])


def test_initialization_follows_spec():
    model = LightNet(LIGHTNETS["LightNet-24ms"])
    depthwise = model.blocks[21].main[3]  # layer 21 is MBK3E6: 3x3 depthwise over 1056 channels
    fan_out = 3 * 3 * depthwise.out_channels / depthwise.groups
    assert abs(depthwise.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.05 * (2.0 / fan_out) ** 0.5
    assert torch.equal(model.classifier[1].weight, torch.ones(1280))
    assert torch.equal(model.classifier[4].bias, torch.zeros(1000))
    assert model.classifier[1].eps == 1e-5  # BatchNorm1d keeps its defaults


# ------------------------------------------------------------ arch_config forms

README_STRING = str(LIGHTNETS["LightNet-20ms"])  # "['MBK3E1', 'SkipConnect', ...]"


def test_arch_config_accepts_every_form(tmp_path):
    expected = LIGHTNETS["LightNet-20ms"]
    assert resolve_arch_config(expected) == expected
    assert resolve_arch_config("LightNet-20ms") == expected
    assert resolve_arch_config(README_STRING) == expected
    assert resolve_arch_config(json.dumps(expected)) == expected
    arch_json = tmp_path / "arch.json"
    arch_json.write_text(json.dumps({"arch_config": expected, "predicted_latency_ms": 20.0}))
    assert resolve_arch_config(str(arch_json)) == expected
    plain_list = tmp_path / "list.json"
    plain_list.write_text(json.dumps(expected))
    assert resolve_arch_config(str(plain_list)) == expected


def _bad_forms(tmp_path):
    valid = list(LIGHTNETS["LightNet-20ms"])
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{not json")
    no_key = tmp_path / "nokey.json"
    no_key.write_text(json.dumps({"arch": valid}))
    return {
        "too short": (str(valid[:-1]), "expected 22 op names"),
        "unknown op": (str(valid[:5] + ["MBK9E3"] + valid[6:]), "unknown op 'MBK9E3'; valid ops: MBK3E3"),
        "first layer": (str(["MBK3E3"] + valid[1:]), "layer 0 must be MBK3E1"),
        "MBK3E1 elsewhere": (str(valid[:4] + ["MBK3E1"] + valid[5:]), "only allowed at layer 0"),
        "malformed string": ("['MBK3E1', 'SkipConnect'", "could not parse"),
        "unhashable key": ("[{[]: 1}]", "could not parse"),
        "not strings": ("[1, 2, 3]", "list of op names"),
        "malformed json": (str(broken_json), "not valid JSON"),
        "json without key": (str(no_key), "no 'arch_config' key"),
        "missing json": (str(tmp_path / "absent.json"), "not found"),
        "unknown name": ("LightNet-99ms", "neither a registered network"),
    }


def test_bad_arch_config_fails_with_one_line_and_exit_2(tmp_path, capsys):
    for label, (value, message) in _bad_forms(tmp_path).items():
        with pytest.raises(SystemExit) as exit_info:
            run_cli(model_train.main, model_train.get_args_parser(), ["--arch_config", value])
        assert exit_info.value.code == 2, label
        error_output = capsys.readouterr().err.strip()
        assert error_output.count("\n") == 0, label
        assert error_output.startswith("error: --arch_config") and message in error_output, (label, error_output)


@pytest.mark.parametrize("width", ["nan", "inf", "0", "-1"])
def test_bad_width_mult_fails_with_one_line(width, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(model_train.main, model_train.get_args_parser(), ["--arch_config", "LightNet-24ms", "--width_mult",
                                                                    width])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --width_mult must be in (0, 4], got {float(width)}"


def test_code_in_arch_config_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "executed"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"[__import__('os').system('touch {marker}')]",
        f"['MBK3E1'] + [open('{marker}', 'w').write('x')]",
    ]
    for payload in payloads:
        with pytest.raises(UserError):
            resolve_arch_config(payload)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(model_train.main, model_train.get_args_parser(), ["--arch_config", payload])
        assert exit_info.value.code == 2
    capsys.readouterr()
    assert not marker.exists()


def test_summary_prints_params_and_flops(capsys):
    run_cli(model_train.main, model_train.get_args_parser(), ["--arch_config", "LightNet-24ms"])
    output = capsys.readouterr().out
    assert "Params: 7.09 M (7,091,168)" in output
    model = LightNet(LIGHTNETS["LightNet-24ms"])
    assert f"({sum(p.numel() for p in model.parameters()):,})" in output
    assert "FLOPs: 393.8 M" in output
    assert output.count("\n") == 22 + 1 + 2  # header, 22 layers, params, FLOPs


def test_arch_indices_round_trip():
    arch = LIGHTNETS["LightNet-22ms"]
    indices = operations.arch_to_indices(arch)
    assert len(indices) == 21 and indices[0] == operations.SEARCHABLE_OPS.index("MBK7E6")
    assert operations.indices_to_arch(indices) == arch
    assert operations.arch_to_indices(arch[1:]) == indices
    with pytest.raises(ValueError, match="layer 0 must be MBK3E1"):
        operations.arch_to_indices(["MBK3E1SE"] + arch[1:])
    with pytest.raises(ValueError, match="not searchable"):
        operations.arch_to_indices(LIGHTNETS["LightNet-22ms-SE"])


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])
def test_depthwise_conv_that_skips_padding_taps_equals_the_full_conv(kernel, stride, size):
    full = torch.nn.Conv2d(6, 6, kernel, stride, kernel // 2, groups=6, bias=False)
    cropped = operations.DepthwiseConv2d(6, 6, kernel, stride, kernel // 2, groups=6, bias=False)
    cropped.load_state_dict(full.state_dict())
    x = torch.randn(2, 6, size, size, requires_grad=True)
    expected, got = full(x), cropped(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got.square().sum().backward()
    expected_input_grad = torch.autograd.grad(expected.square().sum(), x)[0]
    torch.testing.assert_close(x.grad, expected_input_grad, rtol=1e-5, atol=1e-6)
    (expected_weight_grad,) = torch.autograd.grad(full(x).square().sum(), full.weight)
    torch.testing.assert_close(cropped.weight.grad, expected_weight_grad, rtol=1e-5, atol=1e-6)


def test_unreachable_taps_only_where_the_kernel_outgrows_the_map():
    assert operations.unreachable_taps(size=1, kernel=7, stride=1, padding=3) == 3
    assert operations.unreachable_taps(size=2, kernel=7, stride=1, padding=3) == 2
    assert operations.unreachable_taps(size=2, kernel=7, stride=2, padding=3) == 2
    assert operations.unreachable_taps(size=7, kernel=7, stride=1, padding=3) == 0
    assert operations.unreachable_taps(size=56, kernel=3, stride=2, padding=1) == 0

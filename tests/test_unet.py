"""The inpainting U-Net: every arm and size preset, any valid H x W, clear errors otherwise."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from lambda_blocks.unet import ARMS, SIZES, InpaintUNet, UNetConfig, build_unet, unet_config, variant_arm_names

VARIANT_ARMS = variant_arm_names()  # one arm per registered mixer


def inputs(b, c, h, w):
    return torch.randn(b, 2 * c + 1, h, w), torch.randint(0, 1000, (b,))


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_forward_backward_tiny(arm):
    torch.manual_seed(0)
    net = build_unet(arm, "tiny", widths=(16, 32), table_size=8)
    hw = (8, 8) if net.cfg.fixed_size else (8, 12)  # the authors' position table: one square size
    x, t = inputs(2, 3, *hw)
    out = net(x, t)
    assert out.shape == (2, 3, *hw)
    # conv_out's last conv is zero-initialised; perturb it so gradients reach the whole network
    from lambda_blocks.latent.kd import output_anchor

    torch.nn.init.normal_(output_anchor(net)[1], std=0.1)
    net(x, t).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{arm}: no/non-finite gradient for {missing[:5]}"


@pytest.mark.parametrize("arm", VARIANT_ARMS)
@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("hw", [(8, 8), (8, 20)])
def test_sizes_and_resolutions(arm, size, hw):
    net = build_unet(arm, size).eval()
    x, t = inputs(1, 3, *hw)
    with torch.no_grad():
        assert net(x, t).shape == (1, 3, *hw)


def test_latent_channels_and_category_context():
    net = build_unet("lmi", "tiny", image_channels=4, context="category", num_tokens=10)
    x, t = inputs(2, 4, 16, 16)
    assert net(x, t).shape == (2, 4, 16, 16)
    ctx = net.make_context(x)
    assert ctx.shape == (2, 10, net.cfg.context_dim)
    assert torch.equal(ctx[0], ctx[1])  # one category: the same LCG tokens for every sample


def test_image_context_depends_only_on_known_pixels():
    net = build_unet("lmi", "tiny").eval()
    x, _ = inputs(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    x[:, 3:6] *= 1 - mask
    x[:, 6:7] = mask
    y = x.clone()
    y[:, 0:3] = torch.randn(1, 3, 16, 16)  # the noisy sample does not enter the context
    torch.testing.assert_close(net.make_context(x), net.make_context(y))


def test_indivisible_size_raises_clear_error():
    net = build_unet("lmi", "large")  # 3 levels
    x, t = inputs(1, 3, 18, 16)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(levels-1\\) = 4"):
        net(x, t)


def test_wrong_input_channels_raise():
    net = build_unet("vanilla", "tiny")
    with pytest.raises(ValueError, match="cat\\(noisy, masked, mask\\)"):
        net(torch.randn(1, 6, 8, 8), torch.zeros(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(self_mixer="flash"), "self_mixer"),
        (dict(conv="grouped"), "conv"),
        (dict(mix_levels=(5,)), "mix_levels"),
        (dict(context="none"), "cross_mixer needs context"),
        (dict(num_tokens=10), "square"),
        (dict(heads=0), "heads"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet_config("lmi", "tiny", **kwargs)


def test_unknown_arm_size_and_key():
    with pytest.raises(KeyError, match="known arms"):
        build_unet("gla", "tiny")
    with pytest.raises(KeyError, match="known sizes"):
        build_unet("lmi", "huge")
    with pytest.raises(TypeError, match="widht"):
        build_unet("lmi", "tiny", widht=3)


def test_size_presets_grow_and_lmi_is_smallest():
    for arm in VARIANT_ARMS:
        params = [build_unet(arm, s).num_params() for s in SIZES]
        assert params == sorted(params), arm
    tiny = {arm: build_unet(arm, "tiny").num_params() for arm in VARIANT_ARMS}
    assert min(tiny, key=tiny.get) == "lmi"


def test_paper_options_pass_through():
    cfg = unet_config("lmi", "tiny", self_kwargs={"norm": "batch", "r": 7},
                      cross_kwargs={"position": "table", "feat_size": (16, 16), "num_tokens": 16}, mix_levels=(0,))
    net = InpaintUNet(cfg)
    blk = net.down[0][0].mix
    assert blk.self_mixer.r == 7 and isinstance(blk.self_mixer.norm_q, torch.nn.BatchNorm2d)
    assert blk.cross_mixer.pos_table.shape[0] == 256
    x, t = inputs(2, 3, 16, 16)
    assert net(x, t).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="fixed to feat_size"):
        net(*inputs(1, 3, 32, 32))


def test_config_round_trips_through_dict():
    cfg = unet_config("moebius", "small")
    assert UNetConfig(**cfg.to_dict()) == cfg


def test_import_changes_no_global_torch_setting():
    code = (
        "import torch\n"
        "def flags():\n"
        "    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,\n"
        "            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,\n"
        "            torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype(),\n"
        "            torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.is_grad_enabled())\n"
        "before = flags()\n"
        "import lambda_blocks, lambda_blocks.layers, lambda_blocks.unet\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.iter_modules(lambda_blocks.__path__):\n"
        "    if m.name not in ('__main__',) and not m.name.startswith('_'):\n"
        "        try: importlib.import_module('lambda_blocks.' + m.name)\n"
        "        except ImportError: pass\n"
        "assert flags() == before, (before, flags())\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_aliased_arms_are_one_network_trained_once():
    """Arms that build the same network share one canonical name, one config and one run folder."""
    from lambda_blocks.config import resolve
    from lambda_blocks.unet import ARM_ALIASES, ARMS, arm_names, canonical_arm

    assert canonical_arm("moebius") == "lmi" and canonical_arm("baseline") == "linear"
    assert canonical_arm("swap_self") == "local_lambda" and canonical_arm("swap_cross") == "interactive_lambda"
    for arm, canon in ARM_ALIASES.items():
        assert ARMS[arm] == ARMS[canon]
        assert ARMS[canon] not in [ARMS[a] for a in list(ARMS)[: list(ARMS).index(canon)]]
        assert resolve("smoke", arm=arm).run_name == resolve("smoke", arm=canon).run_name
    distinct = {a for a in ARMS if canonical_arm(a) == a}
    assert len({json.dumps(ARMS[a], sort_keys=True) for a in distinct}) == len(distinct)  # no two left alike
    assert arm_names("lmi") == ["lmi", "moebius"]
    with pytest.raises(KeyError, match="unknown arm"):
        canonical_arm("nope")


def test_moebius_paper_is_the_authors_configuration():
    """``moebius_paper``: BatchNorm on queries and values, one absolute position table per level sized
    by the run's working side (pixel or latent), 32 GroupNorm groups at C = 32 where ours has 16, and
    a conv_out that is not zero; it is its own network (not an alias of lmi) and fixed to one size."""
    from lambda_blocks.config import resolve
    from lambda_blocks.layers.lambda_layers import InteractiveLambda, LocalLambda
    from lambda_blocks.unet import canonical_arm

    assert canonical_arm("moebius_paper") == "moebius_paper"
    cfg = resolve("dev", arm="moebius_paper").unet_config()
    assert cfg.table_size == 32 and cfg.fixed_size == 32
    net = InpaintUNet(cfg)
    ours = build_unet("moebius", "tiny")
    tables = {}
    for name, mod in net.named_modules():
        if isinstance(mod, LocalLambda):
            assert isinstance(mod.norm_q, torch.nn.BatchNorm2d) and isinstance(mod.norm_v, torch.nn.BatchNorm2d)
        if isinstance(mod, InteractiveLambda):
            assert mod.position == "table" and isinstance(mod.norm_v, torch.nn.BatchNorm1d)
            tables[mod.dim] = tuple(mod.pos_table.shape)
    assert tables == {32: (32 * 32, 16, 8, 1), 64: (16 * 16, 16, 16, 1)}
    assert net.norm_out.num_groups == 32 and ours.norm_out.num_groups == 16
    # the authors' conv_out: depthwise 3x3 then pointwise 1x1, default init; ours: dense 3x3, zero
    dw, pw = net.conv_out
    assert dw.groups == dw.in_channels == 32 and pw.kernel_size == (1, 1) and pw.weight.abs().sum() > 0
    assert ours.conv_out.weight.abs().sum() == 0 and ours.conv_out.kernel_size == (3, 3)
    from lambda_blocks.latent.kd import output_anchor

    assert output_anchor(net) == ("conv_out.1.weight", pw.weight)  # the paper's conv_out.conv_pw
    assert output_anchor(ours) == ("conv_out.weight", ours.conv_out.weight)
    zeroed = InpaintUNet(dataclasses.replace(cfg, zero_init_out=True))
    assert zeroed.conv_out[1].weight.abs().sum() == 0 and zeroed.conv_out[0].weight.abs().sum() > 0
    x, t = inputs(2, 3, 32, 32)
    assert net(x, t).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="fixed to feat_size"):
        net(*inputs(1, 3, 64, 64))
    latent = resolve("dev", arm="moebius_paper", overrides={"latent.space": "latent", "data.image_size": 64})
    assert latent.unet_config().table_size == latent.work_size == 64 // latent.ae_config().factor
    with pytest.raises(ValueError, match="table_size"):
        unet_config("moebius_paper", "tiny")  # no run, no size: a clear error, not a guess


def test_lambda_gain_reaches_every_lambda_mixer_and_nothing_else():
    """``lambda_gain`` becomes each lambda mixer's ``layer_scale`` (per level too); a mixer's own
    ``layer_scale`` wins; an arm without lambda mixers builds the same network with or without it."""
    from lambda_blocks.layers.lambda_layers import InteractiveLambda, LocalLambda, _LayerScale

    def gains(net):
        return {n: round(float(m.gain.weight[0].detach()), 6) if isinstance(m.gain, _LayerScale) else None
                for n, m in net.named_modules() if isinstance(m, (LocalLambda, InteractiveLambda))}

    g = gains(build_unet("lmi", "tiny", lambda_gain=0.05))
    assert len(g) == 12 and set(g.values()) == {0.05}  # 6 mixing blocks, 2 lambda layers each
    assert set(gains(build_unet("lmi", "tiny")).values()) == {None}
    assert unet_config("lmi", "tiny", lambda_gain=0.05).uses_lambda_gain
    for arm in ("linear", "vanilla", "swap_ffn", "swap_conv", "moebius_paper"):
        cfg = unet_config(arm, "tiny", lambda_gain=0.05, **({"table_size": 32} if arm == "moebius_paper" else {}))
        assert not cfg.uses_lambda_gain, arm
        torch.manual_seed(0)
        a = InpaintUNet(cfg).state_dict()
        torch.manual_seed(0)
        b = InpaintUNet(dataclasses.replace(cfg, lambda_gain=None)).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), arm
    mixed = unet_config("linear", "tiny", self_mixer=("local_lambda", "linear"), lambda_gain=0.1)
    lvl0 = gains(InpaintUNet(mixed))  # Local-λ at level 0 only (3 mixing blocks there), linear at level 1
    assert mixed.uses_lambda_gain and len(lvl0) == 3 and set(lvl0.values()) == {0.1}
    own = gains(build_unet("lmi", "tiny", lambda_gain=0.05, self_kwargs={"layer_scale": 0.3}))
    assert {v for k, v in own.items() if "self_mixer" in k} == {0.3} and {v for k, v in own.items() if "cross" in k} == {0.05}
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="lambda_gain"):
            unet_config("lmi", "tiny", lambda_gain=bad)

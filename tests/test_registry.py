"""The registry is the single source of truth up to the study: a mixer registered once (one class,
its roles, its label) appears in the block's choices, the U-Net arms, the config, the sweeps, the
notebook parameters, the figure labels and the palette, with no other file edited."""
import pytest
import torch
from torch import nn

from lambda_blocks import plotting
from lambda_blocks.config import resolve
from lambda_blocks.layers import common
from lambda_blocks.layers.blocks import cross_mixers, self_mixers
from lambda_blocks.nbparams import validate_notebook
from lambda_blocks.unet import ARMS, ARM_ALIASES, UNetConfig, build_unet, canonical_arm, variant_arm_names


@pytest.fixture
def toy():
    """A throw-away self mixer: a 1x1 conv of the pixels (no context)."""

    @common.register_attention("toy_mixer", roles=("self",), label="Toy 1x1")
    class Toy(common.TokenMixer):
        def __init__(self, dim: int, heads: int = 4):
            super().__init__()
            self.dim, self.proj = dim, nn.Conv2d(dim, dim, 1)

        def forward(self, x, context=None):
            self._check_input(x, context)
            return self.proj(x)

        def macs(self, h, w, context_len=0):
            return h * w * self.dim * self.dim

    yield Toy
    common.unregister_attention("toy_mixer")


def test_a_registered_mixer_reaches_every_place_that_lists_mixers(toy):
    from ablations.runner import load_sweep

    assert "toy_mixer" in self_mixers() and "toy_mixer" not in cross_mixers()
    assert variant_arm_names()[-1] == "toy_mixer" and "toy_mixer" in ARMS and canonical_arm("toy_mixer") == "toy_mixer"
    assert ARMS["toy_mixer"] == dict(self_mixer="toy_mixer", cross_mixer="vanilla", ffn="mlp", conv="dense")
    assert plotting.LABELS["toy_mixer"] == "Toy 1x1" and plotting.label("toy_mixer") == "Toy 1x1"
    assert plotting.PALETTE["toy_mixer"] not in {plotting.PALETTE[a] for a in variant_arm_names() if a != "toy_mixer"}
    points = load_sweep("ablations/quality_vs_size.yaml").points("smoke")
    assert [p["arm"] for p in points][-1] == "toy_mixer"
    params = validate_notebook("20_profile", {**_nb20_defaults(), "variants": "all", "arms": "all"})
    assert params["variants"][-1] == "toy_mixer" and params["arms"][-1] == "toy_mixer"
    cfg = resolve("smoke", arm="toy_mixer")
    net = build_unet("toy_mixer", "tiny")
    assert any(isinstance(m, toy) for m in net.modules())
    x = torch.randn(2, 2 * 3 + 1, 16, 16)
    assert net(x, torch.tensor([3, 500])).shape == (2, 3, 16, 16)
    assert cfg.run_name.startswith("toy_mixer-smoke-tiny-s0-")


def test_the_registry_refuses_what_it_cannot_place(toy):
    with pytest.raises(ValueError, match="already registered"):
        common.register_attention("toy_mixer")(toy)
    with pytest.raises(ValueError, match="roles"):
        common.register_attention("bad_role", roles=("middle",))
    with pytest.raises(TypeError, match="arm"):
        common.register_attention("bad_block", roles=("block",))(type("B", (common.TokenMixer,), {}))
    with pytest.raises(ValueError, match="cannot be a cross mixer"):
        common.create_mixer("toy_mixer", 16, "cross")
    with pytest.raises(ValueError, match="cross_mixer"):
        UNetConfig(self_mixer="linear", cross_mixer="toy_mixer")


def test_unregistered_mixer_leaves_no_trace(toy):
    common.unregister_attention("toy_mixer")
    assert "toy_mixer" not in ARMS and "toy_mixer" not in ARM_ALIASES and "toy_mixer" not in plotting.LABELS
    assert "toy_mixer" not in variant_arm_names()


def test_a_mixer_per_level():
    """Softmax attention at the lowest resolution, Local-λ at full resolution."""
    net = build_unet("linear", "tiny", self_mixer=("local_lambda", "vanilla"))
    by_level = [type(net.down[lv][0].mix.self_mixer).__name__ for lv in range(2)]
    assert by_level == ["LocalLambda", "VanillaAttention"]
    assert type(net.up[0][0].mix.self_mixer).__name__ == "VanillaAttention"  # up[0] is the lowest level
    assert type(net.up[1][0].mix.self_mixer).__name__ == "LocalLambda"
    with pytest.raises(ValueError, match="one name per level"):
        UNetConfig(self_mixer=("local_lambda",))
    with pytest.raises(ValueError, match="self_mixer"):
        UNetConfig(self_mixer=("local_lambda", "interactive_lambda"))
    cfg = resolve("smoke", arm="linear", overrides={"unet.self_mixer": ["local_lambda", "vanilla"]})
    assert cfg.unet_config().self_mixer == ("local_lambda", "vanilla")
    assert cfg.run_name != resolve("smoke", arm="linear").run_name


def test_the_variant_arms_are_derived_and_unchanged():
    assert variant_arm_names() == ["vanilla", "linear", "local_lambda", "interactive_lambda", "lmi"]
    assert ARMS["lmi"] == ARMS["moebius"] and ARM_ALIASES["moebius"] == "lmi"
    assert plotting.LABELS["linear"] == "Linear attn (= baseline)" and plotting.LABELS["lmi"] == "LλMI (= Moebius)"


def _nb20_defaults():
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks/20_profile.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in (c.get("metadata", {}).get("tags") or []))
    ns: dict = {}
    exec("".join(cell["source"]), ns)
    return {k: v for k, v in ns.items() if not k.startswith("__")}

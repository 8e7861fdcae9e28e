"""Interchangeable token mixers (one contract, one registry) and the blocks built from them."""
from .common import (
    LayerNorm2d,
    TokenMixer,
    create_attention,
    explicit_ops,
    explicit_ops_enabled,
    get_attention_class,
    list_attention,
    register_attention,
)
from .attention import LinearAttention, VanillaAttention, softmax_attention
from .lambda_layers import LAMBDA_CONVS, InteractiveLambda, LocalLambda, lambda_conv
from .blocks import CROSS_MIXERS, FFNS, SELF_MIXERS, GegluMLP, LMIBlock, MixBlock2d, MixFFN

__all__ = [
    "CROSS_MIXERS", "FFNS", "LAMBDA_CONVS", "SELF_MIXERS",
    "GegluMLP", "InteractiveLambda", "LMIBlock", "LayerNorm2d", "LinearAttention", "LocalLambda",
    "MixBlock2d", "MixFFN", "TokenMixer", "VanillaAttention",
    "create_attention", "explicit_ops", "explicit_ops_enabled", "get_attention_class",
    "lambda_conv", "list_attention", "register_attention", "softmax_attention",
]

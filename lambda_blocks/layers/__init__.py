"""Interchangeable token mixers (one contract, one registry) and the blocks built from them."""
from .common import (
    LayerNorm2d,
    TokenMixer,
    create_attention,
    create_mixer,
    explicit_ops,
    explicit_ops_enabled,
    get_attention_class,
    list_attention,
    mixers,
    register_attention,
    unregister_attention,
)
from .attention import LinearAttention, VanillaAttention, softmax_attention
from .lambda_layers import LAMBDA_CONVS, InteractiveLambda, LocalLambda, lambda_conv
from .blocks import FFNS, GegluMLP, LMIBlock, MixBlock2d, MixFFN, cross_mixers, self_mixers

__all__ = [
    "FFNS", "LAMBDA_CONVS", "cross_mixers", "self_mixers", "create_mixer", "mixers", "unregister_attention",
    "GegluMLP", "InteractiveLambda", "LMIBlock", "LayerNorm2d", "LinearAttention", "LocalLambda",
    "MixBlock2d", "MixFFN", "TokenMixer", "VanillaAttention",
    "create_attention", "explicit_ops", "explicit_ops_enabled", "get_attention_class",
    "lambda_conv", "list_attention", "register_attention", "softmax_attention",
]

"""Slow, obviously correct reference implementations, used only by tests and the walkthrough.

Each function takes a built module and recomputes its output with explicit loops over pixels and
neighbours, straight from the formulas in the module docstrings, so a silent math bug in the fast
einsum / convolution paths shows up as a mismatch.
"""
from __future__ import annotations

import torch

from .attention import FEATURE_MAPS, LinearAttention, VanillaAttention
from .lambda_layers import InteractiveLambda, LocalLambda, fourier_features


def _proj(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A bias-free 1x1 conv as a matmul: (C, N) -> (C', N) for one sample."""
    return conv.weight[:, :, 0, 0] @ x


def reference_position_lambda(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
    """λp_n[k, v] = Σ_u Σ_Δ R[k, u, Δ] V[u, v, n + Δ] (+ b_k), zero outside the image. v: (B, u, v, N)."""
    b, u, dv, _ = v.shape
    k, r = weight.shape[0], weight.shape[-1]
    vol = v.reshape(b, u, dv, h, w)
    out = torch.zeros(b, k, dv, h, w, dtype=v.dtype)
    for i in range(h):
        for j in range(w):
            for di in range(r):
                for dj in range(r):
                    y, x = i + di - r // 2, j + dj - r // 2
                    if 0 <= y < h and 0 <= x < w:
                        out[:, :, :, i, j] += torch.einsum("ku,buv->bkv", weight[:, :, di, dj], vol[:, :, :, y, x])
            if bias is not None:
                out[:, :, :, i, j] += bias[None, :, None]
    return out.reshape(b, k, dv, h * w)


def reference_local_lambda(m: LocalLambda, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loop over the lambda layer: y_n = (λc + λp_n)^T q_n for every query head."""
    b, c, h, w = x.shape
    n = h * w
    k, u, dv, nh = m.dim_k, m.dim_u, m.dim_v, m.heads
    q = m.norm_q(m.to_q(x)).reshape(b, nh, k, n)
    keys = m.to_k(x).reshape(b, u, k, n).softmax(dim=-1)
    v = m.norm_v(m.to_v(x)).reshape(b, u, dv, n)
    pos = reference_position_lambda(v, m.pos_weight, m.pos_bias, h, w)
    out = torch.zeros(b, nh, dv, n, dtype=x.dtype)
    for s in range(b):
        content = sum(keys[s, uu] @ v[s, uu].T for uu in range(u))  # (k, v)
        for p in range(n):
            lam = content + pos[s, :, :, p]
            for head in range(nh):
                out[s, head, :, p] = lam.T @ q[s, head, :, p]
    return out.reshape(b, nh * dv, h, w)


def reference_interactive_lambda(m: InteractiveLambda, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Per-pixel loop: λp_n = Σ_l Σ_u E[n, l, k, u] V[u, v, l] with E built explicitly."""
    b, c, h, w = x.shape
    n, L = h * w, context.shape[1]
    k, u, dv, nh = m.dim_k, m.dim_u, m.dim_v, m.heads
    q = m.norm_q(m.to_q(x)).reshape(b, nh, k, n)
    keys = m.to_k(context).reshape(b, L, u, k).permute(0, 2, 3, 1).softmax(dim=-1)  # (b, u, k, L)
    v = m._values(context).reshape(b, L, u, dv).permute(0, 2, 3, 1)  # (b, u, v, L)
    if m.position == "fourier":
        pk = m.to_pos_k(context).reshape(b, L, u, k).permute(0, 2, 3, 1)  # (b, u, k, L)
        gate = m.pos_gate(fourier_features(h, w, m.n_freq, x.device, x.dtype)).reshape(n, k, u)
    out = torch.zeros(b, nh, dv, n, dtype=x.dtype)
    for s in range(b):
        content = sum(keys[s, uu] @ v[s, uu].T for uu in range(u))
        for p in range(n):
            lam = content.clone()
            for l in range(L):
                for uu in range(u):
                    if m.position == "fourier":
                        e = gate[p, :, uu] * pk[s, uu, :, l]  # E[n, l, :, u]
                    elif m.position == "table":
                        e = m.pos_table[p, l, :, uu]
                    else:
                        continue
                    lam = lam + torch.outer(e, v[s, uu, :, l])
            for head in range(nh):
                out[s, head, :, p] = lam.T @ q[s, head, :, p]
    return out.reshape(b, nh * dv, h, w)


def reference_linear_attention(m: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The O(N^2) kernel form: y_n = Σ_m (φ(q_n)·φ(k_m)) v_m / Σ_m φ(q_n)·φ(k_m)."""
    b, c, h, w = x.shape
    n, nh, d = h * w, m.heads, m.dim_head
    phi = FEATURE_MAPS[m.feature_map]
    qkv = m.to_qkv(x).reshape(b, 3, nh, d, n)
    q, k, v = phi(qkv[:, 0]), phi(qkv[:, 1]), qkv[:, 2]
    out = torch.zeros(b, nh, d, n, dtype=x.dtype)
    for s in range(b):
        for head in range(nh):
            sim = q[s, head].T @ k[s, head]  # (N, N) kernel matrix
            out[s, head] = (v[s, head] @ sim.T) / (sim.sum(dim=1) + m.eps)
    return m.to_out(out.reshape(b, nh * d, h, w))


def reference_vanilla(m: VanillaAttention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit softmax(q k^T / sqrt(d)) v per head, with exp and division written out."""
    b, c, h, w = x.shape
    n, nh, d = h * w, m.heads, m.dim_head
    q = m.to_q(x).reshape(b, nh, d, n)
    if context is None:
        kv = m.to_kv_self(x).reshape(b, 2, nh, d, n)
        k, v = kv[:, 0], kv[:, 1]
    else:
        kv = m.to_kv_ctx(context)  # (b, L, 2*nh*d)
        kv = kv.reshape(b, context.shape[1], 2, nh, d).permute(2, 0, 3, 4, 1)
        k, v = kv[0], kv[1]
    out = torch.zeros(b, nh, d, n, dtype=x.dtype)
    for s in range(b):
        for head in range(nh):
            scores = q[s, head].T @ k[s, head] / d**0.5
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            out[s, head] = v[s, head] @ weights.T
    return m.to_out(out.reshape(b, nh * d, h, w))

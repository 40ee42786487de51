"""Transformer building blocks of the VL mixer and the DiT.

Module and parameter names follow the released checkpoint's state-dict keys
(``attn1.to_q``, ``ff.net.0.proj``, ``norm1.linear`` ...), so weights load unchanged.

Shapes: ``B`` batch, ``T`` query tokens, ``S`` context tokens, ``D`` width, ``H`` heads,
``Dh`` head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration import TransformerConfig

KV = tuple[Tensor, Tensor]


def timestep_features(buckets: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of integer timestep buckets for the DiT's AdaLN: ``(N,) -> (N, dim)``.

    Frequencies ``exp(-ln(max_period) * k / (dim/2 - 1))``; the output is ``[cos | sin]``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=buckets.device) / (half - 1)
    )
    angles = buckets.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def action_time_features(buckets: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of the flow time for the action encoder: ``(...) -> (..., dim)``.

    Frequencies ``exp(-ln(10000) * k / (dim/2))``; the output is ``[sin | cos]``.
    """
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32, device=buckets.device) * (math.log(10000.0) / half))
    angles = buckets.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """Fixed sinusoidal position table ``(1, num_positions, dim)``: sin on even dims, cos on odd."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, num_positions, dim)
    table[0, :, 0::2] = torch.sin(position * freqs)
    table[0, :, 1::2] = torch.cos(position * freqs)
    return table


class SinusoidalPositions(nn.Module):
    """Adds a fixed sinusoidal table to the tokens. The table is stored in checkpoints as ``pe``."""

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_positions, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TimestepEmbedder(nn.Module):
    """256 sinusoidal features -> D, SiLU, -> D."""

    def __init__(self, dim: int, in_features: int = 256):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class TimestepEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)

    def forward(self, buckets: Tensor) -> Tensor:
        """``(N,)`` integer buckets -> ``(N, D)`` timestep embedding."""
        w = self.timestep_embedder.linear_1.weight
        return self.timestep_embedder(timestep_features(buckets).to(w.dtype))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by the timestep: ``norm(x) * (1 + scale) + shift``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)

    def modulation(self, temb: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, D)`` timestep embedding -> ``(scale, shift)``, each ``(N, D)``."""
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return scale, shift

    def forward(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        # scale/shift are per sample: (B, D) broadcast over the T tokens.
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; keys/values may come from a context."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, dropout: float, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def _split_heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def project_kv(self, context: Tensor) -> KV:
        """Keys and values of a context ``(B, S, Dc)`` -> two ``(B, H, S, Dh)`` tensors."""
        return self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))

    def forward(self, x: Tensor, kv: KV | None = None) -> Tensor:
        """Attend from ``x (B, T, D)`` to ``kv``, or to ``x`` itself when ``kv`` is None."""
        k, v = self.project_kv(x) if kv is None else kv
        q = self._split_heads(self.to_q(x))
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))  # (B, H, T, Dh)
        B, _, T, _ = out.shape
        out = out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)
        for layer in self.to_out:
            out = layer(out)
        return out


class GELUProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``Linear(D, 4D)``, GELU, dropout, ``Linear(4D, D)``, optional final dropout."""

    def __init__(self, dim: int, dropout: float, activation: str, final_dropout: bool, mult: int = 4):
        super().__init__()
        approximate = "tanh" if activation == "gelu-approximate" else "none"
        layers: list[nn.Module] = [
            GELUProjection(dim, dim * mult, approximate),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        ]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm attention + feed-forward block.

    ``adaptive`` blocks (the DiT) normalise the attention input with AdaLN on the timestep; the
    others (the VL mixer) use a plain affine LayerNorm. A block attends to a context when one's
    keys/values are given, and to itself otherwise.
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        adaptive: bool,
        norm_eps: float = 1e-5,
        norm_affine: bool = True,
        context_dim: int | None = None,
    ):
        super().__init__()
        dim = cfg.inner_dim
        self.adaptive = adaptive
        self.pos_embed = (
            SinusoidalPositions(dim, cfg.max_num_positional_embeddings)
            if cfg.positional_embeddings == "sinusoidal"
            else None
        )
        self.norm1 = AdaLayerNorm(dim) if adaptive else nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.attn1 = Attention(
            dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias, cfg.dropout, context_dim
        )
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.ff = FeedForward(dim, cfg.dropout, cfg.activation_fn, cfg.final_dropout)
        self.final_dropout = nn.Dropout(cfg.dropout) if cfg.final_dropout else None

    def forward(self, x: Tensor, kv: KV | None = None, modulation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.adaptive:
            assert modulation is not None, "an adaptive block needs its timestep modulation"
            h = self.norm1(x, *modulation)
        else:
            h = self.norm1(x)
        if self.pos_embed is not None:
            h = self.pos_embed(h)
        attn = self.attn1(h, kv)
        if self.final_dropout is not None:
            attn = self.final_dropout(attn)
        x = x + attn
        return x + self.ff(self.norm3(x))

"""The NitroGen model: SigLIP vision tower -> VL mixer -> flow-matching DiT -> action decoder.

Shapes: ``B`` batch, ``F`` frames, ``P`` visual tokens per frame, ``S`` VL tokens (left padded to
``max_sequence_length``), ``H`` action horizon, ``A`` action dims, ``D`` width, ``N`` denoising steps.

Per frame, everything that does not depend on the noisy actions (vision features, the mixer output
and every cross-attention block's keys/values) is computed once into a :class:`Conditioning`.
Per denoising schedule, the timestep modulations are computed once into a :class:`Schedule`.
Each Euler step then runs only the DiT over the ``H`` action tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Beta
from torch.utils.checkpoint import checkpoint

from .configuration import CheckpointConfig, DiTConfig, MixerConfig
from .layers import KV, TimestepEncoder, TransformerBlock, action_time_features
from .vision import VisionSpec, build_vision_tower


class CategorySpecificLinear(nn.Module):
    """A linear layer with one weight matrix per embodiment: ``W (E, in, out)``, ``b (E, out)``."""

    def __init__(self, num_categories: int, dim_in: int, dim_out: int):
        super().__init__()
        self.W = nn.Parameter(0.02 * torch.randn(num_categories, dim_in, dim_out))
        self.b = nn.Parameter(torch.zeros(num_categories, dim_out))

    def forward(self, x: Tensor, category: Tensor) -> Tensor:
        if self.W.shape[0] == 1:
            # One embodiment (the released model): a plain matmul on views, no per-sample weight copy.
            return torch.addmm(self.b[0], x.reshape(-1, x.shape[-1]), self.W[0]).view(*x.shape[:-1], -1)
        # x (B, T, in) @ W[category] (B, in, out) + b[category] (B, 1, out)
        return torch.bmm(x, self.W[category]) + self.b[category][:, None]


class ActionEncoder(nn.Module):
    """Noisy actions and flow time -> action tokens: ``W3(swish(W2([W1 a | sin(t)])))``."""

    def __init__(self, action_dim: int, dim: int, num_embodiments: int):
        super().__init__()
        self.W1 = CategorySpecificLinear(num_embodiments, action_dim, dim)
        self.W2 = CategorySpecificLinear(num_embodiments, 2 * dim, dim)
        self.W3 = CategorySpecificLinear(num_embodiments, dim, dim)

    def forward(self, actions: Tensor, buckets: Tensor, embodiment: Tensor) -> Tensor:
        B, T, _ = actions.shape
        a = self.W1(actions, embodiment)  # (B, T, D)
        tau = action_time_features(buckets[:, None].expand(B, T), a.shape[-1]).to(a.dtype)  # (B, T, D)
        x = F.silu(self.W2(torch.cat([a, tau], dim=-1), embodiment))
        return self.W3(x, embodiment)


class ActionDecoder(nn.Module):
    """DiT output tokens -> velocities: ``layer2(relu(layer1(h)))``."""

    def __init__(self, dim: int, action_dim: int, num_embodiments: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_embodiments, dim, dim)
        self.layer2 = CategorySpecificLinear(num_embodiments, dim, action_dim)

    def forward(self, h: Tensor, embodiment: Tensor) -> Tensor:
        return self.layer2(F.relu(self.layer1(h, embodiment)), embodiment)


class VLMixer(nn.Module):
    """Self-attention over the VL tokens (vision tokens, optional game token, left padding)."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(TransformerBlock(cfg, adaptive=False) for _ in range(cfg.num_layers))

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.transformer_blocks:
            tokens = block(tokens)
        return tokens


@dataclass
class Schedule:
    """Everything a denoising schedule needs that depends only on the timestep buckets.

    ``buckets (N,)``; per block ``(scale, shift)``, each ``(N, D)``; output ``(shift, scale)``.
    """

    buckets: Tensor
    block_modulations: list[tuple[Tensor, Tensor]]
    out_modulation: tuple[Tensor, Tensor]

    def step(self, i: int, batch: int) -> tuple[Tensor, list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
        """Bucket and modulations of step ``i``, broadcast to ``batch`` samples."""

        def pick(t: Tensor) -> Tensor:
            return t[i : i + 1].expand(batch, -1)

        return (
            self.buckets[i : i + 1].expand(batch),
            [(pick(s), pick(b)) for s, b in self.block_modulations],
            (pick(self.out_modulation[0]), pick(self.out_modulation[1])),
        )

    def detached_copy(self) -> Schedule:
        """A copy made of ordinary tensors (see :meth:`Conditioning.detached_copy`)."""
        return Schedule(
            self.buckets.clone(),
            [(s.clone(), b.clone()) for s, b in self.block_modulations],
            (self.out_modulation[0].clone(), self.out_modulation[1].clone()),
        )


RTC_BETA = 5.0
"""Real-time chunking's default cap on the guidance weight (Black et al. 2025, arXiv 2506.07339: beta = 5)."""


def rtc_soft_mask(delay: Tensor, length: Tensor, horizon: int) -> Tensor:
    """RTC's soft mask ``W (R, H)`` over a new chunk, per row of ``delay (R,)`` and ``length (R,)``.

    ``W_i = 1`` for the ``d`` frozen actions ``i < d`` (they run before the new chunk arrives);
    ``W_i = c_i (e^c_i - 1) / (e - 1)`` with ``c_i = (k - i) / (k - d + 1)`` over the rest of the
    overlap ``d <= i < k``, where ``k`` is the prefix length (the paper's ``H - s``): exponentially
    decaying from about 1 to about 0; and ``W_i = 0`` past the overlap (``i >= k``), where the
    previous chunk has no action. This is equation 5 of the paper.
    """
    i = torch.arange(horizon, device=delay.device, dtype=torch.float32)[None]  # (1, H)
    d, k = delay.float()[:, None], length.float()[:, None]  # (R, 1)
    c = ((k - i) / (k - d + 1)).clamp(min=0.0)
    soft = c * torch.expm1(c) / (torch.e - 1)
    return torch.where(i < d, torch.ones_like(soft), torch.where(i < k, soft, torch.zeros_like(soft)))


def rtc_guidance_weight(t: float, beta: Tensor) -> Tensor:
    """The guidance weight at flow time ``t`` (0 noise, 1 data), clipped at ``beta (R,)``.

    ``min(beta, (1 - t) / (t r_t^2))`` with ``r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2)`` (the paper's
    algorithm 1, in this model's convention where ``t = 0`` is noise); at ``t = 0`` it is ``beta``.
    """
    if t <= 0.0:
        return beta
    r2 = (1 - t) ** 2 / (t**2 + (1 - t) ** 2)
    return beta.clamp(max=(1 - t) / (t * r2))


@dataclass
class PrefixGuide:
    """Inpainting of some rows of a batch towards a prefix: real-time chunking's sampler input.

    ``rows (R,)`` are the batch rows that have a prefix (the others are sampled as usual).
    ``target (R, H, A)`` is each row's prefix (the previous chunk's actions on the new chunk's time
    grid) padded with zeros to the horizon; ``length (R,)`` how many of its rows are real (``k``),
    ``delay (R,)`` how many actions are frozen (``d <= k``). ``guided (R,)`` picks the method per
    row: True is RTC's guided inpainting (soft mask, vector-Jacobian product, ``beta (R,)`` caps
    the weight); False is the cheap hard replacement of the ``d`` frozen actions at every step.
    """

    rows: Tensor
    target: Tensor
    length: Tensor
    delay: Tensor
    guided: Tensor
    beta: Tensor

    def subset(self, mask: Tensor) -> PrefixGuide:
        """The entries ``mask (R,)`` selects."""
        return PrefixGuide(*(getattr(self, f)[mask] for f in ("rows", "target", "length", "delay", "guided", "beta")))

    def frozen(self, horizon: int) -> Tensor:
        """``(R, H, 1)`` True on each row's ``d`` frozen actions."""
        i = torch.arange(horizon, device=self.delay.device)
        return (i[None] < self.delay[:, None])[..., None]


class DiT(nn.Module):
    """The AdaLN diffusion transformer over the action tokens."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.inner_dim
        self.timestep_encoder = TimestepEncoder(dim)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                cfg,
                adaptive=True,
                norm_eps=cfg.norm_eps,
                norm_affine=cfg.norm_elementwise_affine,
                context_dim=cfg.cross_attention_dim if cfg.is_cross_attention_block(i) else None,
            )
            for i in range(cfg.num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, cfg.output_dim)

    def cross_blocks(self) -> list[int]:
        return [i for i in range(len(self.transformer_blocks)) if self.cfg.is_cross_attention_block(i)]

    def context_kv(self, context: Tensor) -> dict[int, KV]:
        """Keys/values of the VL context ``(B, S, D)`` for every cross-attention block."""
        return {i: self.transformer_blocks[i].attn1.project_kv(context) for i in self.cross_blocks()}

    def schedule(self, buckets: Tensor) -> Schedule:
        """Timestep modulations of every block for the buckets ``(N,)``."""
        temb = self.timestep_encoder(buckets)  # (N, D)
        blocks = [block.norm1.modulation(temb) for block in self.transformer_blocks]
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=-1)
        return Schedule(buckets, blocks, (shift, scale))

    def forward(
        self,
        x: Tensor,
        kv: dict[int, KV],
        block_modulations: Sequence[tuple[Tensor, Tensor]],
        out_modulation: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Action tokens ``(B, H, D)`` -> ``(B, H, output_dim)``."""
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, kv.get(i), block_modulations[i])
        shift, scale = out_modulation
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x)


@dataclass
class Conditioning:
    """Per-frame conditioning, independent of the noisy actions: cross-attention keys/values."""

    kv: dict[int, KV]

    @property
    def batch_size(self) -> int:
        return next(iter(self.kv.values()))[0].shape[0] if self.kv else 0

    def rows(self, start: int, stop: int | None = None) -> Conditioning:
        """Samples ``start:stop`` of the batch (e.g. the conditional half of a CFG pass)."""
        return Conditioning({i: (k[start:stop], v[start:stop]) for i, (k, v) in self.kv.items()})

    def select(self, index: Tensor) -> Conditioning:
        """The samples ``index (R,)`` of the batch, in that order."""
        return Conditioning({i: (k[index], v[index]) for i, (k, v) in self.kv.items()})

    def detached_copy(self) -> Conditioning:
        """A copy made of ordinary tensors, usable in autograd even when this one was built under
        ``torch.inference_mode`` (call it outside inference mode)."""
        return Conditioning({i: (k.clone(), v.clone()) for i, (k, v) in self.kv.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Stack several conditionings along the batch, e.g. CFG's two branches or many clients."""
        keys = parts[0].kv.keys()
        return Conditioning(
            {i: (torch.cat([p.kv[i][0] for p in parts]), torch.cat([p.kv[i][1] for p in parts])) for i in keys}
        )


@dataclass
class _Branch:
    """Some rows of a batch with their conditioning and CFG: ``both`` holds the rows' conditional
    inputs, then the unconditional inputs of ``guided`` (indices into the rows), with ``scale (U, 1, 1)``."""

    rows: Tensor
    both: Conditioning
    guided: Tensor | None
    scale: Tensor

    @staticmethod
    def of(
        rows: Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        guided: Tensor | None,
        scale: Tensor,
        *,
        copy: bool = False,
    ) -> _Branch:
        """The branch of batch rows ``rows (M,)``; ``guided (U,)`` and ``scale`` are the batch's."""
        local, parts, sub_scale = None, [cond.select(rows)], scale
        if uncond is not None and guided is not None:
            # uncond row j guides batch row guided[j]; keep those whose batch row is in `rows`.
            position = torch.full((cond.batch_size,), -1, dtype=torch.long, device=rows.device)
            position[rows] = torch.arange(rows.numel(), device=rows.device)
            keep = position[guided] >= 0  # (U,)
            if bool(keep.any()):
                local = position[guided][keep]
                parts.append(uncond.select(torch.nonzero(keep).flatten()))
                sub_scale = scale.expand(guided.numel(), 1, 1)[keep]
        both = parts[0] if len(parts) == 1 else Conditioning.cat(parts)
        if copy:
            both, sub_scale = both.detached_copy(), sub_scale.clone()
            local = None if local is None else local.clone()
        return _Branch(rows.clone() if copy else rows, both, local, sub_scale)


class NitroGenModel(nn.Module):
    """The NitroGen network. Attribute names match the released checkpoint's state-dict keys."""

    def __init__(self, config: CheckpointConfig, vision: VisionSpec, num_games: int | None = None):
        super().__init__()
        self.config = config
        mcfg = config.model_cfg
        if vision.hidden_size != mcfg.vision_hidden_size:
            raise ValueError(
                f"vision tower width {vision.hidden_size} differs from vision_hidden_size {mcfg.vision_hidden_size}"
            )
        self.vision_spec = vision
        self.vision_encoder = build_vision_tower(vision)
        self.model = DiT(mcfg.diffusion_model_cfg)
        self.vl_self_attention_model = VLMixer(mcfg.vl_self_attention_cfg)
        self.action_encoder = ActionEncoder(mcfg.action_dim, mcfg.hidden_size, mcfg.max_num_embodiments)
        self.action_decoder = ActionDecoder(mcfg.hidden_size, mcfg.action_dim, mcfg.max_num_embodiments)
        if mcfg.add_pos_embed:
            self.position_embedding = nn.Embedding(mcfg.max_seq_len, mcfg.hidden_size)
        self.gradient_checkpointing = False  # activation checkpointing of the vision tower in training
        if num_games is not None:
            # Row 0 is the unconditional game.
            self.game_embedding = nn.Embedding(
                num_games, mcfg.vision_hidden_size, padding_idx=0, scale_grad_by_freq=True
            )

    # ----------------------------------------------------------------------------------- context

    @property
    def has_games(self) -> bool:
        return hasattr(self, "game_embedding")

    @property
    def max_vl_tokens(self) -> int:
        return self.config.tokenizer_cfg.max_sequence_length

    def encode_frames(self, pixels: Tensor) -> Tensor:
        """Normalised frames ``(N, 3, 256, 256)`` -> vision tokens ``(N, P, D)``.

        The tower's pooling head is in the checkpoint but unused, so it is not run.
        """
        tower = self.vision_encoder
        tokens = tower.embeddings(pixels.to(tower.embeddings.patch_embedding.weight.dtype))
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Keep only each layer's input; recompute its activations in the backward pass.
            for layer in tower.encoder.layers:
                out = checkpoint(layer, tokens, None, use_reentrant=False)
                tokens = out[0] if isinstance(out, tuple) else out
        else:
            tokens = tower.encoder(inputs_embeds=tokens).last_hidden_state
        return tower.post_layernorm(tokens)

    def vl_tokens(self, frames: Sequence[Tensor], games: Sequence[int | None]) -> Tensor:
        """Assemble each sample's VL token sequence: ``[pad ... | game | frame tokens, oldest first]``.

        ``frames[b]`` is ``(F_b, P, D)``, the sample's valid frames. ``games[b]`` is a game id, or
        None for no game token (its slot is then zero, like the padding). Padding embeddings are
        zero and are attended to, as in the released model. Returns ``(B, S, D)``.
        """
        S, rows = self.max_vl_tokens, []
        for feats, game in zip(frames, games, strict=True):
            image = feats.reshape(-1, feats.shape[-1])  # (F_b * P, D)
            parts = [image]
            if self.has_games:
                if game is None:
                    slot = image.new_zeros(1, image.shape[-1])
                else:
                    slot = self.game_embedding(torch.tensor([game], device=image.device)).to(image.dtype)
                parts.insert(0, slot)
            n = sum(p.shape[0] for p in parts)
            if n > S:
                raise ValueError(f"{n} VL tokens exceed the checkpoint's max_sequence_length of {S}")
            parts.insert(0, image.new_zeros(S - n, image.shape[-1]))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def condition(self, vl_tokens: Tensor) -> Conditioning:
        """Run the mixer over the VL tokens and project every cross-attention block's keys/values."""
        return Conditioning(self.model.context_kv(self.vl_self_attention_model(vl_tokens)))

    # ------------------------------------------------------------------------------- denoising

    def embodiment(self, batch: int, device: torch.device) -> Tensor:
        return torch.zeros(batch, dtype=torch.long, device=device)

    def velocity(
        self,
        x: Tensor,
        cond: Conditioning,
        buckets: Tensor,
        block_modulations: Sequence[tuple[Tensor, Tensor]],
        out_modulation: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Predicted velocity ``(B, H, A)`` of noisy actions ``x (B, H, A)`` at ``buckets (B,)``."""
        B, H, _ = x.shape
        emb = self.embodiment(B, x.device)
        w = self.action_encoder.W1.W
        tokens = self.action_encoder(x.to(w.dtype), buckets, emb)  # (B, H, D)
        if hasattr(self, "position_embedding"):
            tokens = tokens + self.position_embedding.weight[:H].to(tokens.dtype)
        h = self.model(tokens, cond.kv, block_modulations, out_modulation)
        return self.action_decoder(h, emb)

    def step_buckets(self, num_steps: int, device: torch.device | None = None) -> Tensor:
        """Euler step ``i`` of ``N`` runs at ``t = i/N``, bucket ``int(t * num_buckets)``."""
        K = self.config.model_cfg.num_timestep_buckets
        return torch.tensor([int(i / num_steps * K) for i in range(num_steps)], dtype=torch.long, device=device)

    def sample(
        self,
        cond: Conditioning,
        noise: Tensor,
        num_steps: int,
        uncond: Conditioning | None = None,
        cfg_scale: Tensor | float = 1.0,
        schedule: Schedule | None = None,
        guided: Tensor | None = None,
        *,
        prefix: PrefixGuide | None = None,
    ) -> Tensor:
        """Integrate the flow from ``noise (B, H, A)`` with ``num_steps`` Euler steps.

        With ``uncond (U rows)``, classifier-free guidance ``v = v_c + s (v_c - v_u)`` applies to
        the samples ``guided (U,)`` (default: all ``B``, then ``U == B``), and both branches run as
        one batched pass. ``cfg_scale`` is a float or a ``(U,)`` tensor. A batch may thus mix guided
        and unguided samples. The actions are accumulated in float32 whatever the compute precision.

        ``prefix`` inpaints some rows towards a previous chunk (real-time chunking, see
        :class:`PrefixGuide` and :meth:`_sample_inpainted`); the other rows are sampled as usual.
        Without it (or with no rows in it) this is the plain sampler, bit for bit.
        """
        if schedule is None:
            schedule = self.model.schedule(self.step_buckets(num_steps, noise.device))
        B = noise.shape[0]
        if uncond is not None and guided is None:
            guided = torch.arange(B, device=noise.device)
        if prefix is not None and prefix.rows.numel() > 0:
            return self._sample_inpainted(cond, noise, num_steps, uncond, cfg_scale, schedule, guided, prefix)
        both = cond if uncond is None else Conditioning.cat([cond, uncond])
        scale = torch.as_tensor(cfg_scale, dtype=torch.float32, device=noise.device).reshape(-1, 1, 1)
        x = noise.float()
        dt = 1.0 / num_steps
        for i in range(num_steps):
            buckets, mods, out_mod = schedule.step(i, both.batch_size)
            # The unconditional rows see the same noisy actions as the samples they guide.
            xin = x if guided is None else torch.cat([x, x[guided]])
            v = self.velocity(xin, both, buckets, mods, out_mod).float()
            if guided is not None:
                v_cond, v_uncond = v[:B], v[B:]
                v = v_cond.index_add(0, guided, scale * (v_cond[guided] - v_uncond))
            x = x + dt * v
        return x

    def _branch_velocity(self, branch: _Branch, x: Tensor, schedule: Schedule, i: int) -> Tensor:
        """One Euler step's velocity ``(M, H, A)`` of the rows of ``branch``, CFG included."""
        buckets, mods, out_mod = schedule.step(i, branch.both.batch_size)
        M = x.shape[0]
        # The unconditional rows see the same noisy actions as the samples they guide.
        xin = x if branch.guided is None else torch.cat([x, x[branch.guided]])
        v = self.velocity(xin, branch.both, buckets, mods, out_mod).float()
        if branch.guided is not None:
            v_cond, v_uncond = v[:M], v[M:]
            v = v_cond.index_add(0, branch.guided, branch.scale * (v_cond[branch.guided] - v_uncond))
        return v

    def _sample_inpainted(
        self,
        cond: Conditioning,
        noise: Tensor,
        num_steps: int,
        uncond: Conditioning | None,
        cfg_scale: Tensor | float,
        schedule: Schedule,
        guided: Tensor | None,
        prefix: PrefixGuide,
    ) -> Tensor:
        """The sampler with some rows inpainted towards a prefix (real-time chunking).

        Rows without a prefix and ``prefix`` rows (hard replacement) run as one no-grad pass per
        step. Hard rows: after every step their ``d`` frozen actions are set to where the flow
        would carry the prefix, ``(1 - t) eps + t Y`` (``t`` the new flow time), so they end exactly
        at the prefix. RTC rows (guided) run as a second pass with autograd on: the denoiser's
        clean estimate ``A1 = x + (1 - t) v(x)`` is pulled towards the prefix ``Y`` by the
        vector-Jacobian product ``g = ((Y - A1) * W)^T dA1/dx`` with RTC's soft mask ``W``
        (:func:`rtc_soft_mask`), and the step is ``x + dt (v + w g)`` with ``w`` clipped at beta
        (:func:`rtc_guidance_weight`). Their frozen actions are then the prefix exactly: those run
        from the previous chunk anyway.
        """
        B, H, _ = noise.shape
        device = noise.device
        scale = torch.as_tensor(cfg_scale, dtype=torch.float32, device=device).reshape(-1, 1, 1)
        soft, hard = prefix.subset(prefix.guided), prefix.subset(~prefix.guided)
        is_soft = torch.zeros(B, dtype=torch.bool, device=device)
        is_soft[soft.rows] = True
        plain_rows = torch.nonzero(~is_soft).flatten()
        plain = _Branch.of(plain_rows, cond, uncond, guided, scale) if plain_rows.numel() else None
        x = noise.float()
        eps = x.clone()
        target_soft = soft.target.float()
        with torch.inference_mode(False):
            # Ordinary tensors for the autograd pass (the engine samples under inference mode).
            rtc = _Branch.of(soft.rows, cond, uncond, guided, scale, copy=True) if soft.rows.numel() else None
            rtc_schedule = schedule.detached_copy() if rtc is not None else schedule
            weights = rtc_soft_mask(soft.delay, soft.length, H)[..., None]  # (R_soft, H, 1)
        dt = 1.0 / num_steps
        for i in range(num_steps):
            t = i / num_steps
            v = torch.empty_like(x)
            if plain is not None:
                v[plain.rows] = self._branch_velocity(plain, x[plain.rows], schedule, i)
            if rtc is not None:
                with torch.inference_mode(False), torch.enable_grad():
                    xs = x[rtc.rows].clone().requires_grad_(True)  # (R_soft, H, A)
                    vs = self._branch_velocity(rtc, xs, rtc_schedule, i)
                    clean = xs + (1 - t) * vs  # the denoiser's estimate of the final actions
                    error = weights * (target_soft - clean.detach())
                    (g,) = torch.autograd.grad(clean, xs, grad_outputs=error)
                v[rtc.rows] = vs.detach() + rtc_guidance_weight(t, soft.beta)[:, None, None] * g
            x = x + dt * v
            if hard.rows.numel():
                t_next = (i + 1) / num_steps
                carried = (1 - t_next) * eps[hard.rows] + t_next * hard.target.float()
                x[hard.rows] = torch.where(hard.frozen(H), carried, x[hard.rows])
        if soft.rows.numel():
            x[soft.rows] = torch.where(soft.frozen(H), target_soft, x[soft.rows])
        return x

    # -------------------------------------------------------------------------------- training

    def sample_time(self, batch: int, device: torch.device) -> Tensor:
        """Flow time ``t = (1 - Beta(alpha, beta)) * s``, weighted towards the data end."""
        mcfg = self.config.model_cfg
        beta = Beta(
            torch.tensor(mcfg.noise_beta_alpha, device=device), torch.tensor(mcfg.noise_beta_beta, device=device)
        )
        return (1 - beta.sample((batch,))) * mcfg.noise_s

    def flow_matching_loss(
        self,
        cond: Conditioning,
        actions: Tensor,
        *,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """Masked MSE between the predicted and the true velocity ``a - eps``.

        ``actions (B, H, A)`` in the packed layout; ``noisy = (1 - t) eps + t a``; the timestep
        bucket is ``floor(t * num_buckets)``. ``action_mask (B, H, A)`` marks the dims that count.
        """
        B = actions.shape[0]
        noise = torch.randn_like(actions) if noise is None else noise
        t = self.sample_time(B, actions.device) if t is None else t
        t3 = t[:, None, None]
        noisy = (1 - t3) * noise + t3 * actions
        target = actions - noise
        buckets = (t * self.config.model_cfg.num_timestep_buckets).long()
        sched = self.model.schedule(buckets)
        pred = self.velocity(noisy, cond, buckets, sched.block_modulations, sched.out_modulation).float()
        mask = torch.ones_like(actions) if action_mask is None else action_mask.to(actions.dtype)
        return ((pred - target) ** 2 * mask).sum() / (mask.sum() + 1e-6)

    def training_loss(
        self,
        pixels: Tensor,
        frame_valid: Tensor,
        actions: Tensor,
        *,
        action_mask: Tensor | None = None,
        game_ids: Tensor | None = None,
        noise: Tensor | None = None,
        t: Tensor | None = None,
    ) -> Tensor:
        """The flow-matching loss of a training batch, from pixels to the masked velocity MSE.

        ``pixels (B, F, 3, S, S)`` normalised frames, oldest first; ``frame_valid (B, F)`` marks the
        frames that exist (invalid ones, e.g. before an episode's start, are dropped, not encoded);
        ``actions (B, H, A)`` packed targets; ``game_ids (B,)`` or None. All valid frames of the
        batch go through the vision tower in one pass.
        """
        B, F = frame_valid.shape
        counts = frame_valid.sum(dim=1).tolist()
        if any(c == 0 for c in counts):
            raise ValueError("every training sample needs at least one valid frame")
        flat = pixels.reshape(B * F, *pixels.shape[2:])
        feats = self.encode_frames(flat[frame_valid.reshape(-1)])  # (N_valid, P, D)
        per_sample = list(torch.split(feats, counts))  # sample b: (F_b, P, D), oldest first
        games: list[int | None] = [None] * B
        if self.has_games:
            ids = game_ids.tolist() if game_ids is not None else [0] * B
            games = [int(g) for g in ids]
        cond = self.condition(self.vl_tokens(per_sample, games))
        return self.flow_matching_loss(cond, actions, noise=noise, t=t, action_mask=action_mask)

"""The SDM-style SPADE U-Net (Wang et al. 2022), as CASDM uses it, in diffusers' model idiom.

The encoder sees only the noisy image; the middle and decoder blocks replace both group norms of
each residual block by SPADE group norm, GroupNorm(h) * (1 + gamma(m)) + beta(m), whose gamma and
beta come from the one-hot map m. Those modulations depend on the map alone (never on the noisy
image or the timestep), so a sampler can compute them once per map and reuse them at every step:
``SpadeCache`` does that, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


def groups_for(channels: int, max_groups: int = 32) -> int:
    """GroupNorm(32) where possible; the largest divisor below 32 for narrow (test/CPU) widths."""
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class SpadeCache:
    """Per-map memo of every SPADE module's (gamma, beta). Valid for one segmentation batch only."""

    def __init__(self, segmap: torch.Tensor):
        self.segmap = segmap
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


class SPADEGroupNorm(nn.Module):
    def __init__(self, channels: int, label_nc: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(channels), channels, affine=False, eps=eps)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def modulation(self, segmap: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        m = F.interpolate(segmap, size=size, mode="nearest")
        a = self.shared(m)
        return self.gamma(a), self.beta(a)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | SpadeCache) -> torch.Tensor:
        if isinstance(cond, SpadeCache):
            key = id(self)
            if key not in cond.store:
                cond.store[key] = self.modulation(cond.segmap, x.shape[-2:])
            gamma, beta = cond.store[key]
        else:
            gamma, beta = self.modulation(cond, x.shape[-2:])
        return self.norm(x) * (1 + gamma) + beta


class ResBlock(nn.Module):
    """Residual block with timestep FiLM; SPADE norms when ``spade``; optional up/down-sampling inside."""

    def __init__(self, cin: int, cout: int, temb: int, label_nc: int, spade_hidden: int, spade: bool,
                 up: bool = False, down: bool = False, dropout: float = 0.0):
        super().__init__()
        self.spade, self.up, self.down = spade, up, down
        if spade:
            self.norm1 = SPADEGroupNorm(cin, label_nc, spade_hidden)
            self.norm2 = SPADEGroupNorm(cout, label_nc, spade_hidden)
        else:
            self.norm1 = nn.GroupNorm(groups_for(cin), cin)
            self.norm2 = nn.GroupNorm(groups_for(cout), cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def _norm(self, norm: nn.Module, x: torch.Tensor, cond) -> torch.Tensor:
        return norm(x, cond) if self.spade else norm(x)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond=None) -> torch.Tensor:
        h = F.silu(self._norm(self.norm1, x, cond))
        h = self.conv1(self._resample(h))
        x = self._resample(x)
        scale, shift = self.emb(F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self._norm(self.norm2, h, cond) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups_for(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, d]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """One U-Net stage: a residual block, optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res, self.attn = res, attn
        self.gradient_checkpointing = False

    def _run(self, x, emb, cond):
        x = self.res(x, emb, cond)
        return self.attn(x) if self.attn is not None else x

    def forward(self, x, emb, cond=None):
        if self.gradient_checkpointing and torch.is_grad_enabled() and not isinstance(cond, SpadeCache):
            return self._gradient_checkpointing_func(self._run, x, emb, cond)
        return self._run(x, emb, cond)


@dataclass
class SPADEUNetOutput(BaseOutput):
    sample: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)


class SPADEUNet(ModelMixin, ConfigMixin):
    """Semantic-diffusion U-Net: noisy image + timestep + one-hot map -> noise (or v, or noise + variance)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, sample_size: int = 64, in_channels: int = 3, num_classes: int = 13,
                 base_channels: int = 64, channel_mult: tuple[int, ...] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (32, 16, 8), head_channels: int = 64,
                 spade_hidden: int = 128, dropout: float = 0.0, learn_sigma: bool = False):
        super().__init__()
        ch, temb = base_channels, 4 * base_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.time_proj = Timesteps(ch, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch, temb)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        block = dict(temb=temb, label_nc=num_classes, spade_hidden=spade_hidden, dropout=dropout)

        def attn(c: int, res: int) -> AttentionBlock | None:
            return AttentionBlock(c, head_channels) if res in attention_resolutions else None

        self.down, skips, res, c = nn.ModuleList(), [ch], sample_size, ch
        for i, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(Level(ResBlock(c, mult * ch, spade=False, **block), attn(mult * ch, res)))
                c = mult * ch
                skips.append(c)
            if i < len(channel_mult) - 1:
                self.down.append(Level(ResBlock(c, c, spade=False, down=True, **block), None))
                res //= 2
                skips.append(c)
        self.mid = nn.ModuleList([Level(ResBlock(c, c, spade=True, **block), AttentionBlock(c, head_channels)),
                                  Level(ResBlock(c, c, spade=True, **block), None)])
        self.up = nn.ModuleList()
        self.up_ends_level: list[bool] = []
        for i, mult in reversed(list(enumerate(channel_mult))):
            for j in range(num_res_blocks + 1):
                self.up.append(Level(ResBlock(c + skips.pop(), mult * ch, spade=True, **block), attn(mult * ch, res)))
                c = mult * ch
                self.up_ends_level.append(j == num_res_blocks and i == 0)
                if i > 0 and j == num_res_blocks:
                    self.up.append(Level(ResBlock(c, c, spade=True, up=True, **block), None))
                    self.up_ends_level[-1] = False
                    self.up_ends_level.append(True)
                    res *= 2
        self.norm_out = nn.GroupNorm(groups_for(c), c)
        self.conv_out = nn.Conv2d(c, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def spade_cache(self, segmap: torch.Tensor) -> SpadeCache:
        """Memo for the SPADE modulations of ``segmap``; pass it as ``segmap`` at every sampling step."""
        return SpadeCache(segmap.to(self.dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, segmap: torch.Tensor | SpadeCache,
                return_features: bool = False, return_dict: bool = True, feature_levels: int | None = None):
        """``return_features`` also returns the middle block's output and each decoder level's output
        (what the class-aware self-perceptual loss compares). ``feature_levels``: stop once that many
        feature levels are computed and return no sample (None): CA-SP with ``sp_levels: 1`` needs only
        the middle block, and the decoder is most of the network (432 M of 653 M at the paper preset)."""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        cond = segmap if isinstance(segmap, SpadeCache) else segmap.to(sample.dtype)
        h = self.conv_in(sample)
        hs = [h]
        for level in self.down:
            h = level(h, emb)
            hs.append(h)
        for level in self.mid:
            h = level(h, emb, cond)
        feats = [h] if return_features else []
        enough = lambda: return_features and feature_levels is not None and len(feats) >= feature_levels
        out = None
        for level, ends in zip(self.up, self.up_ends_level):
            if enough():
                break
            if level.res.up:
                h = level(h, emb, cond)
            else:
                h = level(torch.cat([h, hs.pop()], dim=1), emb, cond)
            if return_features and ends:
                feats.append(h)
        if not enough():
            out = self.conv_out(F.silu(self.norm_out(h)))
        if not return_dict:
            return (out, feats)
        return SPADEUNetOutput(sample=out, features=feats)


def unet_from_preset(preset, resolution: int, num_classes: int, learn_sigma: bool = False) -> SPADEUNet:
    """Build the network from a ``UNetPreset`` section of params.yaml."""
    model = SPADEUNet(sample_size=resolution, num_classes=num_classes, base_channels=preset.base_channels,
                      channel_mult=tuple(preset.channel_mult), num_res_blocks=preset.num_res_blocks,
                      attention_resolutions=tuple(preset.attention_resolutions),
                      head_channels=preset.head_channels, spade_hidden=preset.spade_hidden,
                      dropout=preset.dropout, learn_sigma=learn_sigma)
    if preset.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model

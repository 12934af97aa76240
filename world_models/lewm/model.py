"""LeWM: a JEPA world model trained end to end from pixels (Maes et al. 2025).

Read top to bottom:

* ``Encoder``: a ViT (patch embedding, CLS token, pre-norm blocks); the CLS
  token goes through a projector MLP with BatchNorm to the latent ``z`` (size D).
* ``ConvEncoder``: the alternative encoder (``cfg.encoder == "cnn"``): four
  3x3 stride-2 convolutions, each with GroupNorm and GELU, flattened to a linear
  layer and LayerNorm, then the same projector. At 64 px it sees the block's
  angle where the ViT does not (docs/results.md, encoder variants).
* ``ActionEncoder``: LeWM's Conv1d (kernel 1) + MLP action embedding.
* ``Predictor``: a causal transformer over the last ``history`` latents; every
  block is conditioned on the action embedding of its time step by adaLN-zero
  (shift, scale and gate from the condition, the gate initialised at zero), then
  a projector MLP with BatchNorm; position t predicts ``z[t + 1]``.
* ``sigreg``: the Epps-Pulley test statistic of random 1-D projections of the
  latents against N(0, 1) (LeJEPA's SIGReg), which keeps the latents from
  collapsing without EMA targets or stop-gradients.
* ``LeWM.loss``: MSE(predicted, encoded next latents) + lambda * SIGReg, and
  with ``cfg.pose_weight > 0`` (not in LeWM) the pose-aware auxiliary loss: a
  small head regresses the probe's six targets from every encoded and every
  predicted latent.

BatchNorm is :class:`GlobalBatchNorm1d`: in a torch.distributed run it takes its
statistics over the global batch, so several processes compute exactly what one
process would on the same batch (torch's SyncBatchNorm needs a GPU).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from world_models.config import CONV_GROUPS, ModelConfig
from world_models.pose import PROBE_FIELDS

POSE_HIDDEN = 256  # the pose head's hidden width
POSE_TARGETS = len(PROBE_FIELDS)

_local_only = False


def distributed() -> bool:
    """True inside a process group of more than one, unless :func:`local_statistics` is active."""
    return not _local_only and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def local_statistics():
    """Within this block SIGReg and BatchNorm use this process's batch only (for evaluation
    that one process runs alone, such as validation on rank 0)."""
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def gather_global(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every process along dim 0, keeping gradients."""
    if not distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the batch of all processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor([float(x.shape[0])])
        dist.all_reduce(count)
        mean = all_reduce(x.sum(0)) / count
        var = all_reduce(((x - mean) ** 2).sum(0)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * count / (count - 1))
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def projector(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """LeWM's projector: Linear -> BatchNorm -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(dim_in, hidden), GlobalBatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, dim_out))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block (the encoder's)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=False)
        return x + self.mlp(self.norm2(x))


class AdaLNZeroBlock(nn.Module):
    """DiT block: LayerNorms without affine, modulated by the condition; gates start at zero."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim, mlp_ratio)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, causal=True)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Encoder(nn.Module):
    """Pixels uint8 (N, H, W, 3) -> latents (N, D)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.encoder_dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.encoder_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches + 1, cfg.encoder_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.encoder_dim, cfg.encoder_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.encoder_dim)
        self.projector = projector(cfg.encoder_dim, cfg.projector_hidden, cfg.latent_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.projector(self.norm(x[:, 0]))


def pose_head(latent_dim: int) -> nn.Sequential:
    """The pose-aware auxiliary head: latents (..., D) -> the probe's six targets (..., 6)."""
    return nn.Sequential(nn.Linear(latent_dim, POSE_HIDDEN), nn.GELU(), nn.Linear(POSE_HIDDEN, POSE_TARGETS))


class ConvLayer(nn.Module):
    """Conv 3x3 stride 2 (padding 1), GroupNorm, GELU: halves the side."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(CONV_GROUPS, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x)))


class ConvEncoder(nn.Module):
    """Pixels uint8 (N, H, W, 3) -> latents (N, D) through a conv stem instead of a ViT."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = (3, *cfg.conv_channels)
        self.convs = nn.ModuleList(ConvLayer(a, b) for a, b in itertools.pairwise(widths))
        self.flat = nn.Linear(widths[-1] * cfg.conv_side**2, cfg.encoder_dim)
        self.norm = nn.LayerNorm(cfg.encoder_dim)
        self.projector = projector(cfg.encoder_dim, cfg.projector_hidden, cfg.latent_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        for layer in self.convs:
            x = layer(x)
        return self.projector(self.norm(self.flat(x.flatten(1))))


class ActionEncoder(nn.Module):
    """Actions (B, T, A) -> embeddings (B, T, dim): Conv1d over time (kernel 1), then an MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cfg.action_dim, cfg.action_embed_dim, kernel_size=1)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.action_embed_dim, 4 * cfg.predictor_dim),
            nn.SiLU(),
            nn.Linear(4 * cfg.predictor_dim, cfg.predictor_dim),
        )

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(actions.transpose(1, 2)).transpose(1, 2))


class Predictor(nn.Module):
    """Latents (B, T, D) and actions (B, T, A) -> next latents (B, T, D), causally."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input = nn.Linear(cfg.latent_dim, cfg.predictor_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.history, cfg.predictor_dim) * 0.02)
        self.action_encoder = ActionEncoder(cfg)
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(cfg.predictor_dim, cfg.predictor_heads, cfg.mlp_ratio) for _ in range(cfg.predictor_depth)
        )
        self.norm = nn.LayerNorm(cfg.predictor_dim)
        self.projector = projector(cfg.predictor_dim, cfg.projector_hidden, cfg.latent_dim)

    def forward(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        b, t, _ = z.shape
        x = self.input(z) + self.pos_embed[:, :t]
        cond = self.action_encoder(actions)
        for block in self.blocks:
            x = block(x, cond)
        return self.projector(self.norm(x).reshape(b * t, -1)).view(b, t, -1)


def sigreg(z: torch.Tensor, projections: int, knots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SIGReg: the Epps-Pulley statistic of random 1-D projections of ``z`` (N, D) against N(0, 1).

    For unit directions ``a``, compares the empirical characteristic function of
    ``z @ a`` with exp(-t^2 / 2) on t in [-3, 3] (by symmetry: twice the
    trapezoid rule on [0, 3]), weighted by exp(-t^2 / 2), times N; averaged
    over directions. In a distributed run it
    is computed on the global batch (gathered with gradients), with the same
    directions in every process (pass generators seeded alike).
    """
    z = gather_global(z)
    n, d = z.shape
    directions = torch.randn(d, projections, generator=generator, dtype=z.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    t = torch.linspace(0.0, 3.0, knots, dtype=z.dtype)
    target = torch.exp(-0.5 * t**2)
    # Trapezoid weights on [0, 3], doubled for the symmetric half [-3, 0] (LeJEPA's convention,
    # which LeWM's lambda = 0.09 assumes).
    dt = 3.0 / (knots - 1)
    weights = torch.full((knots,), 2.0 * dt, dtype=z.dtype)
    weights[0] = weights[-1] = dt
    x = (z @ directions).unsqueeze(-1) * t  # (N, M, K)
    error = (torch.cos(x).mean(0) - target) ** 2 + torch.sin(x).mean(0) ** 2
    return (error @ (weights * target)).mean() * n


class LeWM(nn.Module):
    """Encoder + predictor, and the training loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg) if cfg.encoder == "cnn" else Encoder(cfg)
        self.predictor = Predictor(cfg)
        if cfg.pose_weight > 0:
            self.pose_head = pose_head(cfg.latent_dim)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) -> (..., D)."""
        lead = pixels.shape[:-3]
        return self.encoder(pixels.reshape(-1, *pixels.shape[-3:])).view(*lead, -1)

    def predict(self, z_hist: torch.Tensor, a_hist: torch.Tensor) -> torch.Tensor:
        """The next latent after the last of ``z_hist`` (B, T, D) under ``a_hist`` (B, T, A)."""
        h = self.cfg.history
        return self.predictor(z_hist[:, -h:], a_hist[:, -h:])[:, -1]

    def rollout(self, z_hist: torch.Tensor, a_hist: torch.Tensor, a_future: torch.Tensor) -> torch.Tensor:
        """Open loop: feed predictions back for ``a_future`` (B, H, A); returns (B, H, D).

        ``a_hist[:, -1]`` is the action taken at the last observed latent, so the
        first prediction uses it; ``a_future[:, i]`` is applied at the i-th
        predicted latent (the last one is unused but keeps shapes aligned with
        the runtime interface).
        """
        z, a = z_hist, a_hist
        out = []
        for i in range(a_future.shape[1]):
            nxt = self.predict(z, a)
            out.append(nxt)
            z = torch.cat([z, nxt[:, None]], dim=1)[:, -self.cfg.history :]
            a = torch.cat([a, a_future[:, i : i + 1]], dim=1)[:, -self.cfg.history :]
        return torch.stack(out, dim=1)

    def forward(
        self,
        pixels: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        pose_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss (what DDP wraps); see :meth:`loss`."""
        return self.loss(pixels, actions, generator, pose_targets)

    def loss(
        self,
        pixels: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        pose_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced loss on clips: pixels (B, L, H, W, 3), actions (B, L, A), L = history + 1 or more.

        Every window of ``history`` latents predicts the latent after it. ``pose_targets``
        (B, L, 6), the probe's targets of every frame (``world_models.pose.state_to_targets``),
        are needed when the model has a pose head (``cfg.pose_weight > 0``) and ignored otherwise.
        """
        _b, length = pixels.shape[:2]
        h = self.cfg.history
        z = self.encode(pixels)  # (B, L, D)
        preds, targets = [], []
        for start in range(length - h):
            preds.append(self.predictor(z[:, start : start + h], actions[:, start : start + h]))
            targets.append(z[:, start + 1 : start + h + 1])
        pred = torch.cat(preds, dim=1)
        target = torch.cat(targets, dim=1)
        prediction = F.mse_loss(pred, target)
        reg = torch.stack(
            [sigreg(z[:, i], self.cfg.sigreg_projections, self.cfg.sigreg_knots, generator) for i in range(length)]
        ).mean()
        out = {"loss": prediction + self.cfg.sigreg_weight * reg, "prediction": prediction, "sigreg": reg}
        if self.cfg.pose_weight > 0:
            if pose_targets is None:
                raise ValueError("a model with a pose head (pose_weight > 0) needs pose_targets in its loss")
            windows = torch.cat([pose_targets[:, s + 1 : s + h + 1] for s in range(length - h)], dim=1)
            pose = F.mse_loss(self.pose_head(z), pose_targets) + F.mse_loss(self.pose_head(pred), windows)
            out["loss"] = out["loss"] + self.cfg.pose_weight * pose
            out["pose"] = pose
        return out


@torch.no_grad()
def recalibrate_batchnorm(model: LeWM, clip_batches) -> None:
    """Recompute every BatchNorm's running statistics with the weights as they are now.

    The projector features can have a tiny spread across images while their
    mean drifts during training faster than BatchNorm's running average follows;
    evaluated with stale statistics, latents blow up. This pass (the usual "BN
    recalibration") averages exact batch statistics over ``clip_batches``
    (an iterable of (pixels [B, L, H, W, 3], actions [B, L, A]) tensors):
    first the encoder's, then the predictor's on the recalibrated encoder's
    latents. The model is left in eval mode.
    """

    def reset(module: nn.Module) -> list[nn.Module]:
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        return norms

    batches = list(clip_batches)
    model.eval()
    enc_norms = reset(model.encoder)
    model.encoder.train()
    for pixels, _ in batches:
        model.encode(pixels)
    model.encoder.eval()
    pred_norms = reset(model.predictor)
    model.predictor.train()
    h = model.cfg.history
    for pixels, actions in batches:
        z = model.encode(pixels)
        for start in range(z.shape[1] - h + 1):
            model.predictor(z[:, start : start + h], actions[:, start : start + h])
    model.eval()
    for m in enc_norms + pred_norms:
        m.momentum = 0.1


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per component, and the total."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    if isinstance(model, LeWM):
        counts = {
            "encoder.backbone": sum(
                p.numel() for n, p in model.encoder.named_parameters() if not n.startswith("projector")
            ),
            "encoder.projector": sum(p.numel() for p in model.encoder.projector.parameters()),
            "predictor.action_encoder": sum(p.numel() for p in model.predictor.action_encoder.parameters()),
            "predictor.transformer": sum(
                p.numel()
                for n, p in model.predictor.named_parameters()
                if not n.startswith(("projector", "action_encoder"))
            ),
            "predictor.projector": sum(p.numel() for p in model.predictor.projector.parameters()),
        }
        if model.cfg.pose_weight > 0:
            counts["pose_head"] = sum(p.numel() for p in model.pose_head.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def init_weights(model: nn.Module) -> None:
    """Truncated-normal linears (std 0.02), zero biases; adaLN-zero modulations stay zero."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("modulation.1"):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

"""Model configuration and presets, all in one place.

A preset name like ``slim_96d_4e_4p`` reads: latent size 96, 4 encoder layers,
4 predictor layers (the LeWM model collection's naming). ``tiny`` is sized to
train to a useful model on 2 CPU cores in under an hour; ``baseline`` is LeWM's
192d/6e/6p at 224 px.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from world_models.errors import ArgumentError, LeWorldError

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
DEFAULT_IMAGE_SIZE = 64  # the default preset's frames; what `leworld collect` writes unless told
MIN_IMAGE_SIZE = 8  # the smallest frame the PushT renderer draws
ENCODERS = ("vit", "cnn")
CONV_MULTIPLIERS = (1, 2, 4, 4)  # conv-stem channels per layer, in units of conv_width
CONV_LAYERS = len(CONV_MULTIPLIERS)  # each halves the frame side (3x3, stride 2, padding 1)
CONV_GROUPS = 8  # GroupNorm groups in every conv-stem layer


def check_image_size(size: Any, name: str = "image_size") -> int:
    """The one rule for a frame side: a whole number of pixels, at least :data:`MIN_IMAGE_SIZE`.

    Raises:
        ArgumentError: naming ``name``, the value and the rule.
    """
    try:
        value = operator.index(size) if not isinstance(size, bool) else None
    except TypeError:
        value = None
    if value is None:
        raise ArgumentError(f"{name} must be a whole number of pixels, got {size!r}")
    if value < MIN_IMAGE_SIZE:
        raise ArgumentError(
            f"{name} {value} is below the {MIN_IMAGE_SIZE} px the renderer draws "
            f"(the default preset uses {DEFAULT_IMAGE_SIZE})"
        )
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and the data conventions a model was trained with.

    Attributes:
        image_size: square input frames, pixels.
        encoder: ``"vit"`` (LeWM's) or ``"cnn"`` (a GroupNorm conv stem, :data:`CONV_LAYERS`
            stride-2 layers; the shipped model's, because it sees the block's angle at 64 px).
        patch_size: ViT patch side (``image_size`` must be a multiple).
        encoder_dim / encoder_depth / encoder_heads: the ViT encoder; ``encoder_dim`` is also the
            conv stem's output width (before the projector).
        conv_width: channels of the conv stem's first layer; the layers have
            ``conv_width * (1, 2, 4, 4)`` channels.
        latent_dim: size D of the latent ``z``.
        projector_hidden: hidden width of the projector MLPs (with BatchNorm).
        predictor_dim / predictor_depth / predictor_heads: the causal adaLN-zero predictor.
        action_dim: action size (2: a relative move in [-1, 1]^2).
        action_embed_dim: width of the action encoder's Conv1d output.
        history: latents the predictor sees (LeWM: 3).
        frameskip: physics steps per model step the data was collected with.
        action_scale: pixels per unit of action.
        mlp_ratio: transformer MLP width / model width.
        sigreg_weight: lambda of the SIGReg term (LeWM: 0.09).
        sigreg_projections: random 1-D projections per SIGReg evaluation.
        sigreg_knots: integration points of the Epps-Pulley statistic on [0, 3].
        pose_weight: weight of the pose-aware auxiliary loss (0: pure LeWM). Above 0 the model
            has a small head regressing the probe's six targets (agent xy, block xy, sin/cos of
            the angle) from every encoded and every predicted latent; its error times this
            weight joins the loss. Not in LeWM; the shipped model uses it (docs/design.md).
    """

    image_size: int = DEFAULT_IMAGE_SIZE
    encoder: str = "vit"
    patch_size: int = 16
    encoder_dim: int = 96
    encoder_depth: int = 4
    encoder_heads: int = 4
    latent_dim: int = 64
    projector_hidden: int = 256
    predictor_dim: int = 96
    predictor_depth: int = 3
    predictor_heads: int = 4
    action_dim: int = 2
    action_embed_dim: int = 16
    conv_width: int = 32
    history: int = 3
    frameskip: int = 5
    action_scale: float = 100.0
    mlp_ratio: float = 4.0
    sigreg_weight: float = 0.09
    sigreg_projections: int = 256
    sigreg_knots: int = 17
    pose_weight: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance, never read by the model

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            if f.type == "int" and getattr(self, f.name) < 1:
                problems.append(f"{f.name} must be >= 1, got {getattr(self, f.name)}")
        if problems:
            raise LeWorldError("invalid model config: " + "; ".join(problems))
        if self.encoder not in ENCODERS:
            problems.append(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.encoder == "cnn" and self.image_size % 2**CONV_LAYERS:
            problems.append(f"image_size {self.image_size} is not a multiple of {2**CONV_LAYERS} (the conv stem)")
        if self.encoder == "cnn":
            problems += [
                f"conv_width * {m} = {self.conv_width * m} is not divisible by {CONV_GROUPS} GroupNorm groups"
                for m in CONV_MULTIPLIERS
                if self.conv_width * m % CONV_GROUPS
            ][:1]
        elif self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("encoder", "predictor") if self.encoder == "vit" else ("predictor",):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads:
                problems.append(f"{name}_dim {dim} is not divisible by {name}_heads {heads}")
        if not self.pose_weight >= 0:
            problems.append(f"pose_weight must be >= 0, got {self.pose_weight}")
        if not (self.mlp_ratio > 0 and self.action_scale > 0):
            problems.append(f"mlp_ratio and action_scale must be > 0, got {self.mlp_ratio}, {self.action_scale}")
        if problems:
            raise LeWorldError("invalid model config: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def conv_channels(self) -> tuple[int, ...]:
        """Output channels of each conv-stem layer."""
        return tuple(self.conv_width * m for m in CONV_MULTIPLIERS)

    @property
    def conv_side(self) -> int:
        """Side of the conv stem's last feature map."""
        return self.image_size // 2**CONV_LAYERS

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict; unknown fields and wrong types are errors that name the field."""
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise LeWorldError(f"{source}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise LeWorldError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for name, value in data.items():
            expected = known[name].type
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "str": isinstance(value, str),
                "dict[str, Any]": isinstance(value, dict),
            }.get(expected, True)
            if not ok:
                raise LeWorldError(f"{source}: field {name} must be {expected}, got {value!r}")
        return cls(**data)

    def save(self, folder: Path) -> None:
        from world_models.files import atomic_write_bytes

        atomic_write_bytes(folder / CONFIG_FILE, json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        path = Path(folder) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LeWorldError(f"{path}: missing; a model folder holds config.json and model.safetensors") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LeWorldError(f"{path}: unreadable ({err})") from None
        if not isinstance(data, dict):
            raise LeWorldError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))


def _slim(latent: int, enc: int, pred: int) -> ModelConfig:
    # The LeWM collection's slim variants: 224 px, patch 14 (ViT-tiny width 192), smaller latent and depths.
    return ModelConfig(
        image_size=224,
        patch_size=14,
        encoder_dim=192,
        encoder_depth=enc,
        encoder_heads=3,
        latent_dim=latent,
        projector_hidden=2048,
        predictor_dim=max(latent * 2, 128),
        predictor_depth=pred,
        predictor_heads=4,
        sigreg_projections=1024,
    )


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    # tiny with the conv stem: the shipped model's encoder (docs/results.md, encoder variants)
    "tiny_cnn": ModelConfig(encoder="cnn"),
    # ... and the pose-aware auxiliary loss: the shipped model's recipe (not pure LeWM)
    "tiny_cnn_pose": ModelConfig(encoder="cnn", pose_weight=1.0),
    "slim_48d_2e_2p": _slim(48, 2, 2),
    "slim_64d_3e_3p": _slim(64, 3, 3),
    "slim_96d_2e_3p": _slim(96, 2, 3),
    "slim_96d_4e_4p": _slim(96, 4, 4),
    "slim_128d_4e_4p": _slim(128, 4, 4),
    "slim_192d_4e_4p": _slim(192, 4, 4),
    "baseline": dataclasses.replace(_slim(192, 6, 6), predictor_dim=384, predictor_heads=16),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, with optional field overrides."""
    if name not in PRESETS:
        raise LeWorldError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

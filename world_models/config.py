"""Model configuration and presets, all in one place.

A preset name like ``slim_96d_4e_4p`` reads: latent size 96, 4 encoder layers,
4 predictor layers (the LeWM model collection's naming). ``tiny`` is sized to
train to a useful model on 2 CPU cores in under an hour; ``baseline`` is LeWM's
192d/6e/6p at 224 px.

A config is checked when it is made, before any network is built from it: every field has its
type, every whole-number field lies in [1, its bound in :data:`INT_LIMITS`] (an ``encoder_depth``
of 100000 or an ``image_size`` of 100000 is refused here, not after allocating gigabytes), and
every float field is finite. :meth:`ModelConfig.from_dict` (how ``config.json``, checkpoints and
``.lq40`` headers are read) also refuses a dict that lacks a field: everything this package
writes names every field, so a missing one is a damaged or hand-made file, never a default.

``config.json`` holds the config's fields, ``format_version`` and ``weights_sha256`` (the
SHA-256 of ``model.safetensors``, see :mod:`world_models.files`). Format 2 (this package) always
writes the checksum, and a format-2 ``config.json`` without one is refused; format 1 (folders
written before checksums) has none, and loads unchecked. The two formats' fields are the same, but a
format-1 file may lack the fields added while it was current (:data:`FORMAT_1_LATER_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from world_models.errors import ArgumentError, LeWorldError

CONFIG_FILE = "config.json"
FORMAT_VERSION = 2  # what this package writes; 2 = config.json carries weights_sha256
READ_VERSIONS = (1, 2)  # what it reads (1: before checksums)
# Fields added while format 1 was current: a format-1 file written before them lacks them, and their
# defaults are what such a file meant (a ViT, no pose loss). Format 2 names every field.
FORMAT_1_LATER_FIELDS = ("encoder", "conv_width", "pose_weight")
DEFAULT_IMAGE_SIZE = 64  # the default preset's frames; what `leworld collect` writes unless told
MIN_IMAGE_SIZE = 8  # the smallest frame the PushT renderer draws
# The frame sides `leworld collect` writes: 64 (the default preset's) and 224 (the slim and baseline presets',
# ViT patch 14) and 96; each is a multiple of 16 (the conv stem, the ViT's patch 16). The Python API draws any
# side from MIN_IMAGE_SIZE up (check_image_size); the command line offers these.
IMAGE_SIZES = (64, 96, 224)
ENCODERS = ("vit", "cnn")
CONV_MULTIPLIERS = (1, 2, 4, 4)  # conv-stem channels per layer, in units of conv_width
CONV_LAYERS = len(CONV_MULTIPLIERS)  # each halves the frame side (3x3, stride 2, padding 1)
CONV_GROUPS = 8  # GroupNorm groups in every conv-stem layer

# Upper bounds of the whole-number fields: far above any model here (the baseline preset is 224 px,
# 6 + 6 layers, widths up to 2048), low enough that a config cannot ask for an absurd network.
MAX_IMAGE_SIZE = 1024  # image_size, patch_size (pixels)
MAX_DEPTH = 64  # encoder_depth, predictor_depth (transformer blocks)
MAX_WIDTH = 8192  # every width: encoder/predictor/latent dims, heads, projector_hidden, action_embed_dim, conv_width
MAX_HISTORY = 2048  # history (the memory model's longest context, world_models.memory.model.HIST_RECORDS)
MAX_ACTION_DIM = 64  # action_dim
MAX_FRAMESKIP = 1000  # frameskip (physics steps per model step)
MAX_SIGREG_PROJECTIONS = 1 << 16  # sigreg_projections
MAX_SIGREG_KNOTS = 1024  # sigreg_knots
MAX_MLP_RATIO = 64.0  # mlp_ratio (a float field: it must also be finite and > 0)
INT_LIMITS = {
    "image_size": MAX_IMAGE_SIZE,
    "patch_size": MAX_IMAGE_SIZE,
    "encoder_dim": MAX_WIDTH,
    "encoder_depth": MAX_DEPTH,
    "encoder_heads": MAX_WIDTH,
    "latent_dim": MAX_WIDTH,
    "projector_hidden": MAX_WIDTH,
    "predictor_dim": MAX_WIDTH,
    "predictor_depth": MAX_DEPTH,
    "predictor_heads": MAX_WIDTH,
    "action_dim": MAX_ACTION_DIM,
    "action_embed_dim": MAX_WIDTH,
    "conv_width": MAX_WIDTH,
    "history": MAX_HISTORY,
    "frameskip": MAX_FRAMESKIP,
    "sigreg_projections": MAX_SIGREG_PROJECTIONS,
    "sigreg_knots": MAX_SIGREG_KNOTS,
}
_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


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
            value = getattr(self, f.name)
            if not _TYPE_CHECKS.get(f.type, lambda v: True)(value):
                problems.append(f"field {f.name} must be {f.type}, got {value!r}")
            elif f.type == "int" and not 1 <= value <= (limit := INT_LIMITS.get(f.name, value)):
                problems.append(f"{f.name} must be >= 1 and <= {limit}, got {value}")
            elif f.type == "float" and not (isinstance(value, int) or math.isfinite(value)):
                problems.append(f"{f.name} must be a finite number, got {value}")
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
        if not self.sigreg_weight >= 0:
            problems.append(f"sigreg_weight must be >= 0, got {self.sigreg_weight}")
        if not (0 < self.mlp_ratio <= MAX_MLP_RATIO and self.action_scale > 0):
            problems.append(
                f"mlp_ratio must be in (0, {MAX_MLP_RATIO:g}] and action_scale > 0, got {self.mlp_ratio}, "
                f"{self.action_scale}"
            )
        elif min(self.encoder_dim, self.predictor_dim) * self.mlp_ratio < 1:
            problems.append(f"mlp_ratio {self.mlp_ratio} leaves an MLP with no hidden units")
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
        """Build from a dict that names every field (as :meth:`to_dict` writes it, ``format_version``
        included; a format-1 dict may lack :data:`FORMAT_1_LATER_FIELDS`); unknown, missing and mistyped
        fields are errors that name them."""
        data = dict(data)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known) - {"format_version"})
        if unknown:
            raise LeWorldError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        optional = FORMAT_1_LATER_FIELDS if data.get("format_version") == 1 else ()
        missing = [name for name in ("format_version", *known) if name not in data and name not in optional]
        if missing:
            raise LeWorldError(
                f"{source}: missing field(s) {', '.join(missing)}; a model config names every field "
                "(a config this package wrote always does: the file is damaged or was edited)"
            )
        version = data.pop("format_version")
        if not _TYPE_CHECKS["int"](version) or version not in READ_VERSIONS:
            raise LeWorldError(
                f"{source}: format_version {version!r} is not supported (expected one of "
                f"{', '.join(map(str, READ_VERSIONS))})"
            )
        for name, value in data.items():
            expected = known[name].type
            if not _TYPE_CHECKS.get(expected, lambda v: True)(value):
                raise LeWorldError(f"{source}: field {name} must be {expected}, got {value!r}")
        try:
            return cls(**data)
        except LeWorldError as err:
            raise LeWorldError(f"{source}: {err}") from None

    def save(self, folder: Path, weights_sha256: str | None = None) -> None:
        """Write ``folder/config.json``: the fields, and ``weights_sha256`` (of the weights) when given."""
        from world_models.files import SHA256_KEY, atomic_write_bytes

        data = self.to_dict() | ({SHA256_KEY: weights_sha256} if weights_sha256 is not None else {})
        atomic_write_bytes(Path(folder) / CONFIG_FILE, json.dumps(data, indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        """``folder/config.json``'s config (see :func:`read_config` for its checksum too)."""
        return read_config(folder)[0]


def read_config(folder: Path) -> tuple[ModelConfig, str | None]:
    """``folder/config.json``: the checked config and its ``weights_sha256`` (None in a format-1 file,
    written before checksums; a format-2 file without one is refused).

    Raises:
        LeWorldError: naming the file, and the field where one is wrong.
    """
    from world_models.files import SHA256_KEY, checked_sha256, read_json_object

    path = Path(folder) / CONFIG_FILE
    data = read_json_object(path, missing="a model folder holds config.json and model.safetensors")
    checksum = checked_sha256(data.pop(SHA256_KEY, None), str(path))
    cfg = ModelConfig.from_dict(data, source=str(path))
    if checksum is None and data["format_version"] >= 2:
        raise LeWorldError(
            f"{path}: missing field {SHA256_KEY} (the SHA-256 of model.safetensors), which every format "
            f"{data['format_version']} config.json carries: the file is damaged or was edited"
        )
    return cfg, checksum


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

"""The LeWorld memory model: bit-level memory, three SLMs, a BLM with binary routing, info requests.

Read top to bottom (docs/leworld_memory.md has the picture and the numbers):

* Memory layout: 65,536 words x 32 bits per sequence (``numba_kernels.bitmem``
  conventions). A *record* is one transition (z_t, a_t, z_{t+1} - z_t) coded
  into 256 bits = 8 words; bit 255 is a valid flag, so an all-zero record
  reads as "nothing". History region: records 0..2047 (words [0, 16384)),
  record j = the j-th most recent transition of the current context.
  Dynamics region: records 2048..8191 (words [16384, 65536)), training-data
  transitions written once after phase 1.
* ``BitCodec``: MLP encoder -> sign -> 255 bits (+ the valid bit), straight-through in
  training; MLP decoder bits -> the transition again (the record's features).
* ``SLM``: tokens from z_{t-1}, (z_t, a_t) and a learned characteristics vector,
  FiLM-modulated by the previous step's info query (no bias: a zero query is
  the identity), a small transformer, product-key logits (256 high-byte + 256
  low-byte) and a query that pools the records of its address range.
* Reads: ``soft`` (training): top-k high x top-k low candidate starts, softmax of
  their summed logits, the weighted sum of their pooled readouts; ``hard``
  (inference): the argmax start, words read with the numba bit-memory kernels.
* ``BLM``: routing logits -> straight-through Gumbel-sigmoid mask (hard 0/1
  forward, sigmoid gradient backward), Switch-style gate scaling of each SLM's
  readout; a transformer over the last latents (+ actions) and the three readout
  tokens predicts z_{t+1} (residual over z_t) and the next step's info query.
* ``LeWorldMemory.rollout``: the open-loop loop every phase, the evaluation and the runtime share.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from numba_kernels import bitmem
from world_models.errors import LeWorldError
from world_models.lewm.model import Block

RECORD_WORDS = 8
RECORD_BITS = RECORD_WORDS * bitmem.WORD_BITS  # 256
VALID_BIT = RECORD_BITS - 1
HIST_RECORDS = 2048
HIST_WORDS = HIST_RECORDS * RECORD_WORDS  # 16384
DYN_RECORDS = bitmem.WORDS // RECORD_WORDS - HIST_RECORDS  # 6144
NUM_SLMS = 3
ABLATIONS = ("memory_zeroed", "memory_shuffled", "random_routing", "all_slms_on", "single_slm", "info_off")


@dataclass(frozen=True)
class MemoryConfig:
    """Architecture of the LeWorld memory model.

    Attributes:
        latent_dim / action_dim: the frozen encoder's latent size, the action size.
        context: latents the model needs (the history region holds the last ``context - 1`` transitions).
        blm_history: latents the BLM sees as tokens.
        codec_hidden: hidden width of the bit encoder and decoder.
        slm_dim / slm_heads / slm_depth: each SLM's transformer; ``char_dim`` its characteristics vector.
        range_words: words each SLM reads (multiples of a record's 8 words).
        blm_dim / blm_heads / blm_depth: the BLM's transformer.
        readout_dim: size of a memory readout; ``query_dim``: size of the info query.
        topk: candidates per byte in the soft read (topk^2 candidate starts).
        mlp_ratio: transformer MLP width / model width.
    """

    latent_dim: int = 64
    action_dim: int = 2
    context: int = 16
    blm_history: int = 4
    codec_hidden: int = 16
    slm_dim: int = 64
    slm_heads: int = 4
    slm_depth: int = 1
    char_dim: int = 32
    range_words: tuple[int, int, int] = (8, 64, 256)
    blm_dim: int = 128
    blm_heads: int = 4
    blm_depth: int = 2
    readout_dim: int = 256
    query_dim: int = 128
    topk: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "range_words", tuple(int(w) for w in self.range_words))
        problems = []
        if len(self.range_words) != NUM_SLMS or any(w < RECORD_WORDS or w % RECORD_WORDS for w in self.range_words):
            problems.append(f"range_words must be {NUM_SLMS} multiples of {RECORD_WORDS}, got {self.range_words}")
        if max(self.range_words) > 256:
            problems.append(f"range_words must be at most 256 words, got {self.range_words}")
        if self.context < 2 or self.context > HIST_RECORDS:
            problems.append(f"context must be in 2..{HIST_RECORDS}, got {self.context}")
        if self.slm_dim % self.slm_heads or self.blm_dim % self.blm_heads:
            problems.append("slm_dim / blm_dim must be divisible by slm_heads / blm_heads")
        if not 1 <= self.topk <= 256:
            problems.append(f"topk must be in 1..256, got {self.topk}")
        if problems:
            raise LeWorldError("invalid memory config: " + "; ".join(problems))

    @property
    def record_dim(self) -> int:
        """Size of a decoded record: (z_t, a_t, z_{t+1} - z_t)."""
        return 2 * self.latent_dim + self.action_dim

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["range_words"] = list(self.range_words)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "memory config") -> MemoryConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LeWorldError(f"{source}: unknown memory field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**data)


MEMORY_PRESETS: dict[str, MemoryConfig] = {
    "tiny": MemoryConfig(),
    "seed": MemoryConfig(
        context=32, codec_hidden=28, slm_dim=128, slm_heads=4, slm_depth=2, blm_dim=384, blm_heads=6, blm_depth=6
    ),
}


def memory_preset(name: str, **overrides: Any) -> MemoryConfig:
    """A memory preset by name (``tiny`` for CPU, ``seed`` for the seed card's sizes), with overrides."""
    if name not in MEMORY_PRESETS:
        raise LeWorldError(f"unknown memory preset {name!r}; choose one of: {', '.join(MEMORY_PRESETS)}")
    return dataclasses.replace(MEMORY_PRESETS[name], **overrides)


def transition_vector(z: torch.Tensor, a: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
    """What a record holds: (z_t, a_t, z_{t+1} - z_t), [..., 2D + A]."""
    return torch.cat([z, a, z_next - z], dim=-1)


# ------------------------------------------------------------------ bit codec
class _SignST(torch.autograd.Function):
    """sign(x) -> {0, 1} forward; the gradient of tanh backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 0.5 * (1 - torch.tanh(x) ** 2)


class BitCodec(nn.Module):
    """Transition (2D + A) <-> 256 bits (255 learned bits + the valid flag at bit 255)."""

    def __init__(self, cfg: MemoryConfig) -> None:
        super().__init__()
        h = cfg.codec_hidden
        self.encoder = nn.Sequential(nn.Linear(cfg.record_dim, h), nn.GELU(), nn.Linear(h, RECORD_BITS - 1))
        self.decoder = nn.Sequential(nn.Linear(RECORD_BITS, h), nn.GELU(), nn.Linear(h, cfg.record_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Transitions [..., 2D + A] -> bits float {0, 1} [..., 256] (straight-through gradient), valid bit set."""
        bits = _SignST.apply(self.encoder(x))
        return torch.cat([bits, torch.ones_like(bits[..., :1])], dim=-1)

    def decode(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits [..., 256] (0/1, any dtype) -> the decoded transition [..., 2D + A]."""
        return self.decoder(bits.float())


# ------------------------------------------------------------------ addressing
def hard_starts(high: torch.Tensor, low: torch.Tensor, length: int) -> torch.Tensor:
    """Argmax word start [B]: 256 * high + low, aligned down to a record, kept inside the memory."""
    start = 256 * high.argmax(-1) + (low.argmax(-1) // RECORD_WORDS) * RECORD_WORDS
    return start.clamp(max=bitmem.WORDS - length)


def candidate_starts(high: torch.Tensor, low: torch.Tensor, k: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Product-key candidates: (word starts [B, k*k], summed logits [B, k*k]) of the top-k high x top-k low bytes."""
    th, hi = high.topk(k, dim=-1)
    tl, lo = low.topk(k, dim=-1)
    scores = (th[:, :, None] + tl[:, None, :]).flatten(1)
    starts = (256 * hi[:, :, None] + (lo[:, None, :] // RECORD_WORDS) * RECORD_WORDS).flatten(1)
    return starts.clamp(max=bitmem.WORDS - length), scores


class Memory:
    """The memory of a batch of sequences during one rollout.

    Torch view (soft reads, and hard reads in torch): per-row history record bits
    [B, Hc, 256] and the shared dynamics record bits [6144, 256], decoded once.
    Numba view (hard reads): ``words`` uint32 [B, 65536] built from the same bits.
    """

    def __init__(self, codec: BitCodec, dyn_bits: torch.Tensor, batch: int, hard: bool) -> None:
        self.codec = codec
        with torch.no_grad():
            self.dyn_feats = codec.decode(dyn_bits)
        self.dyn_valid = dyn_bits[:, VALID_BIT] > 0
        self.words = None
        if hard:
            self.words = bitmem.new_memory(batch)
            dyn = dyn_bits.to(torch.uint8).numpy()
            self.words[:, HIST_WORDS:] = bitmem.pack_bits(dyn).reshape(-1)[None]

    def set_history(self, hist_bits: torch.Tensor) -> None:
        """History region := ``hist_bits`` [B, Hc, 256] (record j = the j-th most recent transition)."""
        self.hist_bits = hist_bits
        with torch.no_grad():
            self.hist_feats = self.codec.decode(hist_bits)
        self.hist_valid = hist_bits[..., VALID_BIT] > 0
        if self.words is not None:
            b, hc = hist_bits.shape[:2]
            packed = bitmem.pack_bits(hist_bits.to(torch.uint8).numpy()).reshape(b, hc * RECORD_WORDS)
            bitmem.write_words(self.words, np.zeros(b, np.int64), packed)

    def gather(self, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded features [B, C, n, F] and valid flags [B, C, n] of record indices [B, C, n] (torch view)."""
        b, hc = self.hist_feats.shape[:2]
        in_hist = records < HIST_RECORDS
        hj = records.clamp(max=hc - 1)
        rows = torch.arange(b)[:, None, None].expand_as(records)
        dj = (records - HIST_RECORDS).clamp(min=0)
        feats = torch.where(in_hist[..., None], self.hist_feats[rows, hj], self.dyn_feats[dj])
        valid = torch.where(in_hist, self.hist_valid[rows, hj] & (records < hc), self.dyn_valid[dj])
        return feats, valid

    def read_hard(self, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Words [start, start + length) of every row through the numba kernels -> (bits, features, valid)."""
        words = bitmem.read_words(self.words, starts.astype(np.int64), length)
        bits = torch.from_numpy(bitmem.unpack_bits(words)).view(len(starts), length // RECORD_WORDS, RECORD_BITS)
        with torch.no_grad():
            feats = self.codec.decode(bits)
        return bits, feats, bits[..., VALID_BIT] > 0


def history_region(records: list[torch.Tensor], p: int, hc: int, batch: int) -> torch.Tensor:
    """The history region's records [B, hc, 256] at position ``p``: the transitions before ``p``
    (``records[i]``: i -> i + 1, chronological), most recent first; unused records empty."""
    recent = records[max(0, p - hc) : p][::-1]
    hist = torch.zeros(batch, hc, RECORD_BITS, dtype=torch.uint8)
    if recent:
        hist[:, : len(recent)] = torch.stack(recent, dim=1)
    return hist


# ------------------------------------------------------------------ SLM
class SLM(nn.Module):
    """A Small LeWorld Model: (z_{t-1}, z_t, a_t, its characteristics, info query) -> an address range, a readout."""

    def __init__(self, cfg: MemoryConfig, range_words: int) -> None:
        super().__init__()
        d = cfg.slm_dim
        self.range_words = range_words
        self.characteristics = nn.Parameter(torch.randn(cfg.char_dim) * 0.5)
        self.past_in = nn.Linear(cfg.latent_dim, d)
        self.current_in = nn.Linear(cfg.latent_dim + cfg.action_dim, d)
        self.char_in = nn.Linear(cfg.char_dim, d)
        self.pos = nn.Parameter(torch.randn(1, 3, d) * 0.02)
        self.film = nn.Linear(cfg.query_dim, 2 * d, bias=False)
        self.blocks = nn.ModuleList(Block(d, cfg.slm_heads, cfg.mlp_ratio) for _ in range(cfg.slm_depth))
        self.norm = nn.LayerNorm(d)
        self.address = nn.Sequential(nn.Linear(d, 3 * d), nn.GELU(), nn.Linear(3 * d, 512))
        self.read_query = nn.Linear(d, cfg.record_dim)
        self.readout = nn.Linear(cfg.record_dim, cfg.readout_dim, bias=False)

    def film_tokens(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """FiLM on the input tokens: x * (1 + gamma) + beta, (gamma, beta) linear in the query without bias."""
        gamma, beta = self.film(query).unsqueeze(1).chunk(2, dim=-1)
        return x * (1 + gamma) + beta

    def forward(
        self, z_prev: torch.Tensor, z_cur: torch.Tensor, a_cur: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> high-byte logits [B, 256], low-byte logits [B, 256], the pooling query [B, F]."""
        char = self.char_in(self.characteristics).expand(z_cur.shape[0], -1)
        x = torch.stack([self.past_in(z_prev), self.current_in(torch.cat([z_cur, a_cur], -1)), char], dim=1)
        x = self.film_tokens(x + self.pos, query)
        for block in self.blocks:
            x = block(x)
        h = self.norm(x[:, 2])
        high, low = self.address(h).chunk(2, dim=-1)
        return high, low, self.read_query(h)

    def pool(self, feats: torch.Tensor, valid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Attention over the valid records of a range: feats [..., n, F], valid [..., n], query [..., F] -> [..., F].

        A range with no valid record pools to zeros (an empty memory reads as nothing).
        """
        scores = (feats * query.unsqueeze(-2)).sum(-1) / math.sqrt(feats.shape[-1])
        weights = torch.softmax(scores.masked_fill(~valid, -1e9), dim=-1) * valid
        return (weights.unsqueeze(-1) * feats).sum(-2)


# ------------------------------------------------------------------ routing
class _HardST(torch.autograd.Function):
    """(s > 0.5) forward, exactly 0/1; identity gradient backward (so d mask / d g = d s / d g)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor) -> torch.Tensor:
        return (s > 0.5).to(s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def gumbel_sigmoid_mask(
    logits: torch.Tensor, tau: float, sample: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid: hard 0/1 forward, the gradient of sigmoid((g + logistic noise) / tau) back."""
    noise = 0.0
    if sample:
        u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)
    return _HardST.apply(torch.sigmoid((logits + noise) / tau))


# ------------------------------------------------------------------ BLM
class BLM(nn.Module):
    """The Big LeWorld Model: routing, next-latent prediction and the info query."""

    def __init__(self, cfg: MemoryConfig) -> None:
        super().__init__()
        d = cfg.blm_dim
        self.z_in = nn.Linear(cfg.latent_dim, d)
        self.action_in = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.randn(1, cfg.blm_history, d) * 0.02)
        self.memory_in = nn.Linear(cfg.readout_dim, d)
        self.slm_embed = nn.Parameter(torch.randn(1, NUM_SLMS, d) * 0.02)
        self.router = nn.Sequential(
            nn.Linear(2 * cfg.latent_dim + cfg.action_dim, d), nn.GELU(), nn.Linear(d, NUM_SLMS)
        )
        self.blocks = nn.ModuleList(Block(d, cfg.blm_heads, cfg.mlp_ratio) for _ in range(cfg.blm_depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.latent_dim)
        self.query_head = nn.Linear(d, cfg.query_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.constant_(self.router[2].bias, 1.0)  # start with every SLM on

    def route(self, z_prev: torch.Tensor, z_cur: torch.Tensor, a_cur: torch.Tensor) -> torch.Tensor:
        """Routing logits g [B, 3] from the current state (and the one before, and the action)."""
        return self.router(torch.cat([z_prev, z_cur, a_cur], dim=-1))

    def forward(
        self, z_hist: torch.Tensor, a_hist: torch.Tensor, readouts: torch.Tensor, gate: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z_hist [B, h, D], a_hist [B, h, A], readouts [B, 3, R], gate [B, 3] -> (z_next [B, D], query [B, Q])."""
        x = self.z_in(z_hist) + self.action_in(a_hist) + self.pos
        mem = self.memory_in(readouts * gate.unsqueeze(-1)) + self.slm_embed
        x = torch.cat([x, mem], dim=1)
        for block in self.blocks:
            x = block(x)
        h = self.norm(x[:, z_hist.shape[1] - 1])
        return z_hist[:, -1] + self.head(h), self.query_head(h)


# ------------------------------------------------------------------ the system
@dataclass
class StepOut:
    """One step's outputs (what the losses and the logs need)."""

    z_next: torch.Tensor
    query: torch.Tensor
    high: list[torch.Tensor]
    low: list[torch.Tensor]
    route_logits: torch.Tensor
    mask: torch.Tensor
    starts: torch.Tensor  # [B, 3] hard (argmax) word starts


class LeWorldMemory(nn.Module):
    """Codec + three SLMs + BLM, and the dynamics region's bits (buffer ``dyn_bits`` uint8 [6144, 256])."""

    def __init__(self, cfg: MemoryConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.codec = BitCodec(cfg)
        self.slms = nn.ModuleList(SLM(cfg, w) for w in cfg.range_words)
        self.blm = BLM(cfg)
        self.register_buffer("dyn_bits", torch.zeros(DYN_RECORDS, RECORD_BITS, dtype=torch.uint8), persistent=False)
        self.register_buffer("usage", torch.ones(NUM_SLMS))  # measured share of steps each SLM is on

    # -------------------------------------------------------------- memory contents
    @torch.no_grad()
    def encode_records(self, x: torch.Tensor) -> torch.Tensor:
        """Transitions [..., 2D + A] -> record bits uint8 [..., 256]."""
        return self.codec.encode(x).to(torch.uint8)

    @torch.no_grad()
    def dynamics_bits(self, transitions: torch.Tensor) -> torch.Tensor:
        """The dynamics region's record bits uint8 [6144, 256] holding ``transitions`` [M <= 6144, 2D + A]
        in order, the rest empty."""
        if len(transitions) > DYN_RECORDS:
            raise LeWorldError(f"the dynamics region holds {DYN_RECORDS} records, got {len(transitions)}")
        bits = torch.zeros(DYN_RECORDS, RECORD_BITS, dtype=torch.uint8)
        bits[: len(transitions)] = self.encode_records(transitions)
        return bits

    def write_dynamics(self, transitions: torch.Tensor) -> None:
        """Dynamics region := :meth:`dynamics_bits` of ``transitions`` (after phase 1)."""
        self.dyn_bits.copy_(self.dynamics_bits(transitions))

    def dynamics_words(self) -> np.ndarray:
        """The memory image of the dynamics region: uint32 [65536] (history region zero)."""
        words = np.zeros(bitmem.WORDS, np.uint32)
        words[HIST_WORDS:] = bitmem.pack_bits(self.dyn_bits.numpy()).reshape(-1)
        return words

    def load_dynamics_words(self, words: np.ndarray) -> None:
        """Inverse of :meth:`dynamics_words`."""
        bits = bitmem.unpack_bits(np.ascontiguousarray(words[HIST_WORDS:])).reshape(DYN_RECORDS, RECORD_BITS)
        self.dyn_bits.copy_(torch.from_numpy(bits))

    def context_records(self, z: torch.Tensor, a: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """Record bits [B, 256] of each transition i -> i + 1 of z [B, C, D], a [B, C, A], chronological;
        empty where ``valid`` [B, C] is False at either end."""
        both = valid[:, :-1] & valid[:, 1:]
        bits = self.encode_records(transition_vector(z[:, :-1], a[:, :-1], z[:, 1:])) * both[..., None]
        return list(bits.unbind(1))

    # -------------------------------------------------------------- reads
    def read(
        self, k: int, memory: Memory, high: torch.Tensor, low: torch.Tensor, query: torch.Tensor, mode: str
    ) -> torch.Tensor:
        """SLM k's readout [B, R]: ``soft`` (differentiable in the logits) or ``hard`` (argmax, numba kernels)."""
        slm, length = self.slms[k], self.slms[k].range_words
        n = length // RECORD_WORDS
        if mode == "hard":
            starts = hard_starts(high, low, length)
            if memory.words is None:  # hard address, torch view of the memory
                feats, valid = memory.gather((starts // RECORD_WORDS)[:, None, None] + torch.arange(n))
                feats, valid = feats[:, 0], valid[:, 0]
            else:
                _, feats, valid = memory.read_hard(starts.numpy(), length)
            return slm.readout(slm.pool(feats, valid, query))
        starts, scores = candidate_starts(high, low, self.cfg.topk, length)
        feats, valid = memory.gather((starts // RECORD_WORDS)[..., None] + torch.arange(n))
        pooled = slm.pool(feats, valid, query.unsqueeze(1))  # [B, C, F]
        weights = torch.softmax(scores, dim=-1)
        return slm.readout((weights.unsqueeze(-1) * pooled).sum(1))

    def read_at(self, k: int, memory: Memory, starts: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """SLM k's readout at given word starts [B] (teacher forcing in phase 1)."""
        slm = self.slms[k]
        n = slm.range_words // RECORD_WORDS
        feats, valid = memory.gather((starts // RECORD_WORDS)[:, None, None] + torch.arange(n))
        return slm.readout(slm.pool(feats[:, 0], valid[:, 0], query))

    # -------------------------------------------------------------- one step
    def step(
        self,
        memory: Memory,
        z_hist: torch.Tensor,
        a_hist: torch.Tensor,
        z_prev: torch.Tensor,
        query: torch.Tensor,
        mode: str = "soft",
        routing: str = "sample",
        tau: float = 1.0,
        forced_mask: torch.Tensor | None = None,
        forced_starts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOut:
        """One prediction: z_hist [B, h, D] (last = current), a_hist [B, h, A], z_prev [B, D], query [B, Q].

        ``routing``: ``sample`` (Gumbel noise), ``deterministic`` (g > 0) or ``forced`` (``forced_mask`` [B, 3]).
        ``forced_starts`` [B, 3] (-1: the SLM's own argmax) reads at given addresses (phase 1).
        """
        z_cur, a_cur = z_hist[:, -1], a_hist[:, -1]
        highs, lows, readouts, starts = [], [], [], []
        for k, slm in enumerate(self.slms):
            high, low, q_read = slm(z_prev, z_cur, a_cur, query)
            hard = hard_starts(high.detach(), low.detach(), slm.range_words)
            if forced_starts is not None:
                at = torch.where(forced_starts[:, k] >= 0, forced_starts[:, k], hard)
                readouts.append(self.read_at(k, memory, at, q_read))
            else:
                readouts.append(self.read(k, memory, high, low, q_read, mode))
            highs.append(high)
            lows.append(low)
            starts.append(hard)
        g = self.blm.route(z_prev, z_cur, a_cur)
        if routing == "forced":
            mask = forced_mask.to(g.dtype)
        else:
            mask = gumbel_sigmoid_mask(g, tau, sample=routing == "sample", generator=generator)
        gate = torch.sigmoid(g) * mask  # Switch-style: the gate value scales what passes
        z_next, q_next = self.blm(z_hist, a_hist, torch.stack(readouts, dim=1), gate)
        return StepOut(z_next, q_next, highs, lows, g, mask, torch.stack(starts, dim=1))

    # -------------------------------------------------------------- open loop
    def rollout(
        self,
        z_ctx: torch.Tensor,
        a_ctx: torch.Tensor,
        a_future: torch.Tensor,
        ctx_valid: torch.Tensor | None = None,
        mode: str = "soft",
        routing: str = "sample",
        tau: float = 1.0,
        ablation: str | None = None,
        zero_query: bool = False,
        hist_rows: torch.Tensor | None = None,
        dyn_bits: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[StepOut]]:
        """Open loop from a context: z_ctx [B, C, D] (last = current), a_ctx [B, C, A] (last = a_t),
        a_future [B, H, A] (``a_future[:, i]`` is applied at the i-th prediction) -> ([B, H, D], per-step outputs).

        The history region at each step holds the last ``context - 1`` transitions before it, most
        recent first, the model's own predicted ones included (records of transitions touching a
        position where ``ctx_valid`` is False are empty). One warm-up step on the context's
        second-to-last position (zero query, prediction discarded) yields the first info query.
        ``ablation`` is one of :data:`ABLATIONS` or None; ``hist_rows`` [B] (memory_shuffled) takes
        row b's history region from row ``hist_rows[b]``; ``dyn_bits`` overrides the dynamics region.
        """
        if ablation is not None and ablation not in ABLATIONS:
            raise LeWorldError(f"unknown ablation {ablation!r}; choose one of: {', '.join(ABLATIONS)}")
        cfg = self.cfg
        b, c, _ = z_ctx.shape
        hc = cfg.context - 1
        ctx_valid = torch.ones(b, c, dtype=torch.bool) if ctx_valid is None else ctx_valid
        dyn = self.dyn_bits if dyn_bits is None else dyn_bits
        forced_mask = None
        if ablation == "memory_zeroed":
            dyn = torch.zeros_like(dyn)
        elif ablation == "memory_shuffled":
            perm = torch.randperm(DYN_RECORDS, generator=torch.Generator().manual_seed(12345))
            dyn = dyn[perm]
        elif ablation == "random_routing":
            routing = "forced"
        elif ablation in ("all_slms_on", "single_slm"):
            routing, forced_mask = "forced", torch.ones(b, NUM_SLMS)
            if ablation == "single_slm":
                forced_mask = F.one_hot(self.usage.argmax(), NUM_SLMS).float().expand(b, -1)
        zero_query = zero_query or ablation == "info_off"
        memory = Memory(self.codec, dyn, b, hard=mode == "hard")

        zs, acts = list(z_ctx.unbind(1)), list(a_ctx.unbind(1))
        records = self.context_records(z_ctx, a_ctx, ctx_valid)

        def run(p: int, query: torch.Tensor) -> StepOut:
            hist = history_region(records, p, hc, b)
            if ablation == "memory_zeroed":
                hist.zero_()
            elif hist_rows is not None:
                hist = hist[hist_rows]
            memory.set_history(hist)
            window = range(p - cfg.blm_history + 1, p + 1)  # before the context: first latent, zero action
            zh = torch.stack([zs[max(0, i)] for i in window], dim=1)
            ah = torch.stack([acts[i] if i >= 0 else torch.zeros_like(acts[0]) for i in window], dim=1)
            fm = forced_mask
            if ablation == "random_routing":
                fm = (torch.rand(b, NUM_SLMS, generator=generator) < self.usage).float()
            return self.step(memory, zh, ah, zs[max(0, p - 1)], query, mode, routing, tau, fm, None, generator)

        query = torch.zeros(b, cfg.query_dim)
        if c >= 2:
            query = run(c - 2, query).query
        if zero_query:
            query = torch.zeros_like(query)
        preds, outs = [], []
        for i in range(a_future.shape[1]):
            p = len(zs) - 1
            out = run(p, query)
            query = torch.zeros_like(out.query) if zero_query else out.query
            zs.append(out.z_next)
            acts.append(a_future[:, i])
            records.append(self.encode_records(transition_vector(zs[p], acts[p], out.z_next.detach())))
            preds.append(out.z_next)
            outs.append(out)
        return torch.stack(preds, dim=1), outs


def count_parameters(model: LeWorldMemory) -> dict[str, int]:
    """Parameters per component (codec, each SLM, BLM) and the total."""
    counts = {"codec": sum(p.numel() for p in model.codec.parameters())}
    for k, slm in enumerate(model.slms):
        counts[f"slm{k}"] = sum(p.numel() for p in slm.parameters())
    counts["blm"] = sum(p.numel() for p in model.blm.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def init_weights(model: nn.Module) -> None:
    """Truncated-normal linears (std 0.02) and zero biases, except the layers initialised on purpose
    (the BLM's zero head and router bias)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith(("blm.head", "blm.router.2")):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

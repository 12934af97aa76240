"""An episodic bit memory: one record per real step, written to a chunk the record picks, read back later.

The memory is one env's :mod:`numba_kernels.bitmem` memory, 65,536 words of 32 bits: :data:`CHUNKS`
= 256 chunks (the address's high byte) of :data:`CHUNK_RECORDS` = 64 records (its low byte, in
records) of :data:`RECORD_WORDS` = 4 words. A record is 128 bits: 127 learned bits and a written
flag (bit 127), so an empty record (all zeros) is told apart from any written one.

* **Write**, once per real step t -> t + 1: the transition x = [z_t, a_t, z_{t+1} - z_t] goes
  through an MLP; the record is the signs of one head, the chunk the argmax of another's 256 logits,
  a product key (:func:`chunk_logits`: 16 high-nibble plus 16 low-nibble scores, so a head has 32
  outputs, not 256).
  Within its chunk a record goes to the next place of a ring of 64 (the chunk's write count mod 64):
  a chunk holds its 64 latest records, and older ones are overwritten.
* **Read**, at frame t: from [z_t, z_t - z_{t-1}] a query picks a chunk (a product key as the write's)
  and an attention query; the chunk's 256 words are read, its written records pooled by attention
  (softmax of query . key(record bits)) into a 128-bit mixture; a linear readout maps it to
  :attr:`EpisodicConfig.channels` channels, which the predictor takes beside the action
  (:mod:`world_models.memory.conditioned`). A chunk with nothing written reads as zeros.
  With ``pooling="max"`` the chunk's written records are pooled instead by the elementwise max of a
  linear projection (``pool_dim`` outputs, :attr:`EpisodicMemory.pool_proj`) and the readout maps that:
  a max answers "did any record show X" (a glide seen once, a block that stopped dead), which a
  softmax over 64 records dilutes (measured on delayed glide, 3 seeds: the damping readable at the
  second release 86 % against attention's 80 %, with no gain in prediction; docs/results.md).

In training the record bits are straight-through signs (hard forward, identity gradient), and the
write and read chunks straight-through one-hots (hard forward, softmax gradient), so training reads
what inference reads; :func:`soft_readout` computes it in torch, :func:`hard_reads` on the bit memory
(:class:`BitMemory`, numba kernels). The fully soft read (every chunk weighted by the read softmax)
is what the gradient sees; the ablation reports its gap to the hard read. At the start every write and
read goes to chunk 0, so the memory begins as attention over the 64 latest transitions and learns
to route from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from numba_kernels import bitmem
from numba_kernels.records import write_records

RECORD_WORDS = 4
RECORD_BITS = RECORD_WORDS * bitmem.WORD_BITS  # 128: 127 learned + the written flag
CHUNKS = 256
KEY_SIDE = 16  # a chunk is a product key: high nibble x low nibble, 16 x 16 = 256
CHUNK_RECORDS = 64
CHUNK_WORDS = CHUNK_RECORDS * RECORD_WORDS  # 256
POOLINGS = ("attention", "max")
assert CHUNKS * CHUNK_WORDS == bitmem.WORDS


@dataclass(frozen=True)
class EpisodicConfig:
    """Sizes of the episodic memory's networks.

    Attributes:
        latent_dim: size of z.
        action_dim: size of a.
        hidden: width of the write MLP.
        attention_dim: width of the read's attention query and the records' keys.
        channels: readout channels the predictor takes beside the action.
        recon_weight: weight of the records' reconstruction of z_{t+1} - z_t.
        read_bias: initial logit of chunk 0 for writes and reads (where every record starts).
        pooling: how a read pools its chunk's records: ``"attention"`` (softmax of a query against
            the records' keys, the 128-bit mixture) or ``"max"`` (the max of a projection of them).
        pool_dim: the projection's width with ``pooling="max"``.
    """

    latent_dim: int = 64
    action_dim: int = 2
    hidden: int = 256
    attention_dim: int = 32
    channels: int = 4
    recon_weight: float = 0.1
    read_bias: float = 6.0
    pooling: str = "attention"
    pool_dim: int = 32

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pool_dim < 1:
            raise ValueError(f"pool_dim must be >= 1, got {self.pool_dim}")

    @property
    def pooled_width(self) -> int:
        """Width of what a read pools (the readout's input): 128 bits mixed, or ``pool_dim`` maxima."""
        return self.pool_dim if self.pooling == "max" else RECORD_BITS


def st_sign(logits: torch.Tensor) -> torch.Tensor:
    """+-1 signs forward, the identity's gradient backward (straight-through bits)."""
    return logits + (torch.where(logits >= 0, 1.0, -1.0) - logits).detach()


def st_one_hot(logits: torch.Tensor) -> torch.Tensor:
    """The argmax as a one-hot forward, the softmax's gradient backward."""
    soft = torch.softmax(logits, dim=-1)
    hard = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return soft + (hard - soft).detach()


def chunk_logits(keys: Any) -> Any:
    """Product-key chunk logits: a head's 2 x 16 outputs (..., 32) -> (..., 256), chunk 16 i + j scoring
    high[i] + low[j]; its argmax is (argmax high, argmax low), its softmax the outer product of theirs.
    numpy arrays or torch tensors."""
    logits = keys[..., :KEY_SIDE, None] + keys[..., None, KEY_SIDE:]
    return logits.reshape(*keys.shape[:-1], CHUNKS)


class EpisodicMemory(nn.Module):
    """The write, read and readout networks of the episodic bit memory (see the module docstring)."""

    def __init__(self, cfg: EpisodicConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.latent_dim
        self.write = nn.Sequential(nn.Linear(2 * d + cfg.action_dim, cfg.hidden), nn.GELU())
        self.record_head = nn.Linear(cfg.hidden, RECORD_BITS - 1)
        self.chunk_head = nn.Linear(cfg.hidden, 2 * KEY_SIDE)
        self.read_chunk = nn.Linear(2 * d, 2 * KEY_SIDE)
        if cfg.pooling == "max":
            self.pool_proj = nn.Linear(RECORD_BITS, cfg.pool_dim)
        else:
            self.read_query = nn.Linear(2 * d, cfg.attention_dim)
            self.key = nn.Linear(RECORD_BITS, cfg.attention_dim)
        self.readout = nn.Linear(cfg.pooled_width, cfg.channels)
        self.recon = nn.Linear(RECORD_BITS - 1, d)
        with torch.no_grad():  # every write and read starts at chunk 0
            for layer in (self.chunk_head, self.read_chunk):
                layer.weight.zero_()
                layer.bias.zero_()
                layer.bias[[0, KEY_SIDE]] = cfg.read_bias / 2

    def transitions(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Episodes z (B, L, D), a (B, L, A) -> for each of the L - 1 transitions: the record (B, L-1, 128)
        as +-1 straight-through bits with the written flag +1, the write chunk (B, L-1, 256) as a
        straight-through one-hot, and the reconstruction loss of z_{t+1} - z_t from the learned bits."""
        delta = z[:, 1:] - z[:, :-1]
        h = self.write(torch.cat([z[:, :-1], a[:, :-1], delta], dim=-1))
        bits = st_sign(self.record_head(h))
        record = torch.cat([bits, torch.ones_like(bits[..., :1])], dim=-1)
        recon = torch.nn.functional.mse_loss(self.recon(bits), delta)
        return record, st_one_hot(chunk_logits(self.chunk_head(h))), recon

    def reads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For every frame of z (B, L, D), from [z_t, z_t - z_{t-1}] (no motion at frame 0): the read
        chunk logits (B, L, 256) and the attention query (B, L, attention_dim; width 0 with max pooling)."""
        motion = torch.cat([torch.zeros_like(z[:, :1]), z[:, 1:] - z[:, :-1]], dim=1)
        x = torch.cat([z, motion], dim=-1)
        query = z[..., :0] if self.cfg.pooling == "max" else self.read_query(x)
        return chunk_logits(self.read_chunk(x)), query

    def scores(self, query: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        """Attention scores query (..., L, A) . key(record) (..., S, A) / sqrt(A): (..., L, S)."""
        return query @ self.key(record).transpose(-1, -2) / self.cfg.attention_dim**0.5


def present(chunks: torch.Tensor) -> torch.Tensor:
    """bool (B, L, L - 1): record s (transition s -> s + 1) is in memory at frame t: written (s < t),
    and fewer than 64 later writes u (s < u < t) went to its chunk. The hard chunks decide."""
    n = chunks.shape[1]
    hard = chunks.detach().argmax(-1)  # (B, n)
    same = (hard[:, :, None] == hard[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)  # [u, s]: u > s
    later_writes = torch.cumsum(same.to(torch.int32), dim=1)  # [u, s]: same-chunk writes in (s, u]
    # at frame t the writes so far are u <= t - 1: count in (s, t - 1]
    counts = torch.cat([torch.zeros_like(later_writes[:, :1]), later_writes], dim=1)  # [t, s]
    t = torch.arange(n + 1)[None, :, None]
    s = torch.arange(n)[None, None, :]
    return (s < t) & (counts < CHUNK_RECORDS)


def soft_readout(
    memory: EpisodicMemory, record: torch.Tensor, chunks: torch.Tensor, read_weights: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The differentiable read at every frame: (B, L, pooled width) = sum over chunks c of read_weights
    (B, L, 256) at c times chunk c's pooled records (0 for a chunk with none). Training passes the
    straight-through one-hot of the read logits (the hard read forward); the softmax gives the fully
    soft read the ablation compares with."""
    mask = present(chunks)
    if memory.cfg.pooling == "max":
        return _max_readout(memory, record, chunks, read_weights, mask)
    scores = memory.scores(query, record)  # (B, L, n)
    scores = torch.where(mask, scores, -torch.inf)
    top = scores.amax(-1, keepdim=True).clamp_min(-1e30).detach()
    weights = torch.where(mask, torch.exp(scores - top), 0.0)  # (B, L, n)
    per_chunk = torch.einsum("bts,bsc->btc", weights, chunks)  # each chunk's softmax normaliser
    ratio = torch.where(per_chunk > 0, read_weights / per_chunk.clamp_min(1e-30), 0.0)
    alpha = weights * torch.einsum("btc,bsc->bts", ratio, chunks)
    return alpha @ record


def _max_readout(
    memory: EpisodicMemory, record: torch.Tensor, chunks: torch.Tensor, read_weights: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """:func:`soft_readout` with max pooling. Per chunk c that some record went to: the max over its
    present records s of ``pool_proj(record_s) * chunks[s, c]`` (the one-hot is 1 forward, so the
    forward is the plain max; backward it carries the write chunks' softmax gradient), weighted by
    read_weights at c. Chunks an episode never wrote read 0, so only each episode's written chunks are
    computed: slot k holds every episode's k-th distinct chunk (an episode writes to a few)."""
    feats = memory.pool_proj(record)  # (B, n, P)
    hard = chunks.detach().argmax(-1)  # (B, n)
    written = [torch.unique(row) for row in hard]
    out = torch.zeros(*mask.shape[:2], feats.shape[-1], dtype=feats.dtype)
    for k in range(max(len(w) for w in written)):
        chunk = torch.tensor([int(w[k]) if k < len(w) else -1 for w in written])  # (B,), -1: none left
        own = hard == chunk[:, None]  # (B, n)
        inside = mask & own[:, None, :]  # (B, L, n)
        one_hot = chunks.gather(-1, chunk.clamp_min(0)[:, None, None].expand(-1, chunks.shape[1], 1))  # (B, n, 1)
        top = torch.where(inside[..., None], (feats * one_hot)[:, None], -torch.inf).amax(2)  # (B, L, P)
        top = torch.where(inside.any(-1, keepdim=True), top, 0.0)
        weight = read_weights.gather(-1, chunk.clamp_min(0)[:, None, None].expand(-1, read_weights.shape[1], 1))
        out = out + weight * top
    return out


# ---------------------------------------------------------------- the hard path, on the bit memory
def unpack_records(words: np.ndarray) -> np.ndarray:
    """uint32 words [..., 4k] -> float32 records [..., k, 128] as +-1 bits, all 0 for an empty record."""
    words = np.asarray(words, np.uint32)
    bits = bitmem.unpack_bits(words.reshape(*words.shape[:-1], -1, RECORD_WORDS)).astype(np.float32)
    return np.where(bits[..., -1:] > 0, 2 * bits - 1, 0.0).astype(np.float32)


class BitMemory:
    """E envs' episodic memories on :mod:`numba_kernels.bitmem`, with each chunk's write count beside them."""

    def __init__(self, num_envs: int) -> None:
        self.words = bitmem.new_memory(num_envs)
        self.writes = np.zeros((num_envs, CHUNKS), np.int64)

    def reset(self, envs: np.ndarray | None = None) -> None:
        """Zero the memories (and write counts) of ``envs`` (all by default)."""
        chosen = slice(None) if envs is None else np.asarray(envs)
        self.words[chosen] = 0
        self.writes[chosen] = 0

    def write(self, chunks: np.ndarray, records: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Write one record per env (+-1 bits [E, 128]) into its chunk ([E] ints) at the chunk's next
        ring place; ``mask`` (bool [E]) picks the envs that write."""
        envs = np.arange(len(chunks))
        place = self.writes[envs, chunks] % CHUNK_RECORDS
        start = chunks * CHUNK_WORDS + place * RECORD_WORDS
        mask = np.ones(len(chunks), bool) if mask is None else np.asarray(mask, bool)
        write_records(self.words, start, records, mask)
        self.writes[envs, chunks] += mask

    def read_chunk(self, chunks: np.ndarray) -> np.ndarray:
        """Each env's chunk ([E] ints) as records [E, 64, 128] (+-1 bits; 0 for an empty record)."""
        return unpack_records(bitmem.read_words(self.words, chunks * CHUNK_WORDS, CHUNK_WORDS))


@torch.no_grad()
def pool(memory: EpisodicMemory, records: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Pooling of each env's chunk records [E, 64, 128] (its query [E, A] with attention): attention's
    128-bit mixture or max pooling's maxima [E, pooled width] over the written records (0 where the
    chunk holds none)."""
    r = torch.from_numpy(records)
    written = r[..., -1] > 0
    if memory.cfg.pooling == "max":
        top = torch.where(written[..., None], memory.pool_proj(r), -torch.inf).amax(1)
        return torch.where(written.any(-1, keepdim=True), top, 0.0).numpy()
    scores = memory.scores(torch.from_numpy(query)[:, None], r)[:, 0]  # (E, 64)
    weights = torch.softmax(torch.where(written, scores, -torch.inf), dim=-1).nan_to_num(0.0)
    return (weights[:, None] @ r)[:, 0].numpy()


@torch.no_grad()
def hard_reads(
    memory: EpisodicMemory,
    z: np.ndarray,
    a: np.ndarray,
    lengths: np.ndarray | None = None,
    z_query: np.ndarray | None = None,
) -> np.ndarray:
    """E episodes at once, frame by frame on a :class:`BitMemory` of E envs: what each read pools at every
    frame t, after the writes of its transitions 0 .. t - 1: [E, L, pooled width] (0 for an empty chunk).

    Args:
        z, a: [E, L, D] and [E, L, A] (or one episode [L, D], [L, A]), padded to L frames.
        lengths: frames of each episode (default L); nothing past an episode's last frame is written.
        z_query: [E, L, D] frames whose reads are made instead (default ``z``): the shuffled ablation
            lets one episode read the memory another wrote.
    """
    single = z.ndim == 2
    z, a = (z[None], a[None]) if single else (z, a)
    z_query = z if z_query is None else (z_query[None] if single else z_query)
    num, frames = z.shape[:2]
    lengths = np.full(num, frames) if lengths is None else np.asarray(lengths)
    zt = torch.from_numpy(np.ascontiguousarray(z, np.float32))
    record, chunks, _ = memory.transitions(zt, torch.from_numpy(np.nan_to_num(a).astype(np.float32)))
    record, chunks = record.numpy(), chunks.argmax(-1).numpy()
    read_logits, query = memory.reads(torch.from_numpy(np.ascontiguousarray(z_query, np.float32)))
    read_chunks, query = read_logits.argmax(-1).numpy(), query.numpy()
    store = BitMemory(num)
    out = np.empty((num, frames, memory.cfg.pooled_width), np.float32)
    for t in range(frames):
        if t > 0:
            store.write(chunks[:, t - 1], record[:, t - 1], mask=t <= lengths - 1)
        out[:, t] = pool(memory, store.read_chunk(read_chunks[:, t]), query[:, t])
    return out[0] if single else out

"""The episodic bit memory: the numba bit-memory store, soft reads that become the hard ones, and a tiny
training run on a delayed task (a hidden bit seen once, needed later) that beats its zeroed memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from world_models.config import ModelConfig
from world_models.data.latents import LatentEpisodes
from world_models.errors import LeWorldError
from world_models.memory.conditioned import step_inputs, window_rows
from world_models.memory.episodic import (
    CHUNK_RECORDS,
    CHUNKS,
    RECORD_BITS,
    BitMemory,
    EpisodicConfig,
    EpisodicMemory,
    hard_reads,
    present,
    soft_readout,
    st_one_hot,
)
from world_models.memory.episodic_train import EpisodicTrainConfig, memory_extra, train_episodic


def _record(rng: np.random.Generator) -> np.ndarray:
    record = rng.choice([-1.0, 1.0], RECORD_BITS).astype(np.float32)
    record[-1] = 1.0  # the written flag
    return record


def test_chunks_of_64_records_of_4_words_fill_the_memory():
    assert CHUNKS * CHUNK_RECORDS * RECORD_BITS == 65536 * 32


def test_a_chunk_keeps_its_64_latest_records_per_env_and_reset_empties_it():
    rng = np.random.default_rng(0)
    store = BitMemory(2)
    records = [_record(rng) for _ in range(CHUNK_RECORDS + 1)]
    for record in records:  # env 0 writes 65 records to chunk 3; env 1 writes only the first, to chunk 7
        store.write(np.array([3, 7]), np.stack([record, record]), mask=np.array([True, record is records[0]]))
    held = store.read_chunk(np.array([3, 7]))
    np.testing.assert_array_equal(held[0, 0], records[-1])  # the 65th overwrote the first: the ring wrapped
    np.testing.assert_array_equal(held[0, 1:], np.stack(records[1:CHUNK_RECORDS]))
    np.testing.assert_array_equal(held[1, 0], records[0])
    assert not held[1, 1:].any()  # never written: empty records read as zeros
    store.reset(np.array([0]))
    assert not store.read_chunk(np.array([3, 3]))[0].any() and store.read_chunk(np.array([7, 7]))[1].any()


def test_a_record_is_present_from_the_frame_after_its_write_until_its_chunk_wraps():
    chunks = torch.nn.functional.one_hot(torch.tensor([[5] * 70]), CHUNKS).float()  # 70 writes, one chunk
    mask = present(chunks)[0]  # (frames 0..70, records 0..69)
    assert not mask[0].any() and mask[1, 0] and not mask[1, 1]
    assert mask[64, :64].all()  # 64 records written, all present
    assert not mask[65, 0] and mask[65, 1:65].all()  # the 65th write overwrote the first


@pytest.mark.parametrize("pooling", ["attention", "max"])
@pytest.mark.parametrize("peaked", [False, True])
def test_the_soft_read_with_a_peaked_chunk_choice_is_the_hard_read_on_the_bit_memory(peaked, pooling):
    """Writes spread over a few chunks. The hard read takes the argmax chunk through the numba kernels,
    and so does training's straight-through read in torch; the soft read mixes every chunk by the read
    softmax: the same when the softmax is peaked, not when it is flat (the untrained read)."""
    torch.manual_seed(0)
    memory = EpisodicMemory(EpisodicConfig(latent_dim=8, hidden=32, pooling=pooling, pool_dim=8))
    torch.manual_seed(0)  # the same routing whatever the pooling's networks drew
    with torch.no_grad():
        for layer in (memory.chunk_head, memory.read_chunk):  # writes and reads among chunks 0..3
            layer.weight.normal_(0, 2.0)
            layer.bias[1:16] = -1e4  # high nibble 0
            layer.bias[20:] = -1e4  # low nibble 0..3
        if peaked:
            memory.read_chunk.weight.mul_(1000)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((40, 8)).astype(np.float32)
    a = rng.uniform(-1, 1, (40, 2)).astype(np.float32)
    with torch.no_grad():
        record, chunks, _ = memory.transitions(torch.from_numpy(z[None]), torch.from_numpy(a[None]))
        logits, query = memory.reads(torch.from_numpy(z[None]))
        soft = soft_readout(memory, record, chunks, torch.softmax(logits, -1), query)[0].numpy()
        trained = soft_readout(memory, record, chunks, st_one_hot(logits), query)[0].numpy()
    hard = hard_reads(memory, z, a)
    assert len(set(chunks[0].argmax(-1).tolist())) > 1
    assert (np.abs(hard).sum(-1) > 0)[1:].mean() > 0.2  # reads find records
    np.testing.assert_allclose(trained, hard, atol=1e-4)  # training's straight-through read is the hard one
    if peaked:
        np.testing.assert_allclose(soft, hard, atol=1e-4)
    else:
        assert np.abs(soft - hard).max() > 1e-2


def _delayed_task(episodes: int, seed: int) -> LatentEpisodes:
    """Latent episodes of 40 frames with a hidden bit b (+-1) that shows once, as a bump of dimension 0
    at frame 5, and is needed again at every 4th frame from 12 on: there dimension 2 flags an event
    and the next frame's dimension 1 is b (then back to 0). The rest is noise; actions carry nothing."""
    rng = np.random.default_rng(seed)
    length, dim = 40, 8
    z = rng.normal(0, 0.05, (episodes, length, dim)).astype(np.float32)
    bits = rng.choice([-1.0, 1.0], episodes).astype(np.float32)
    events = np.arange(12, length - 1, 4)
    z[:, 5, 0] += bits
    z[:, events, 2] += 1.0
    z[:, events + 1, 1] += bits[:, None]
    actions = rng.uniform(-1, 1, (episodes, length, 2)).astype(np.float32)
    actions[:, -1] = np.nan
    return LatentEpisodes(
        z=z.reshape(-1, dim),
        actions=actions.reshape(-1, 2),
        episode_starts=np.arange(episodes + 1) * length,
        physics=bits[:, None],
        physics_names=("bit",),
    )


@pytest.mark.parametrize("pooling", ["attention", "max"])
def test_a_tiny_run_on_a_delayed_task_beats_its_zeroed_memory(pooling):
    train, held_out = _delayed_task(64, seed=0), _delayed_task(32, seed=1)
    base = ModelConfig(latent_dim=8, predictor_dim=32, predictor_depth=1, predictor_heads=2, projector_hidden=32)
    memory_cfg = EpisodicConfig(latent_dim=8, hidden=64, channels=2, pooling=pooling, pool_dim=16)
    cfg = EpisodicTrainConfig(steps=250, episodes=16, windows=128, learning_rate=3e-3, seed=0)
    memory, predictor, _ = train_episodic(train, base, memory_cfg, cfg)
    rows = torch.from_numpy(window_rows(held_out, cfg.history))  # a fixed batch: every held-out window
    z = torch.from_numpy(held_out.z)

    def loss(mode: str) -> float:
        inputs = torch.from_numpy(step_inputs(held_out, memory_extra(memory, held_out, mode)))
        with torch.no_grad():
            return torch.nn.functional.mse_loss(predictor(z[rows[:, :-1]], inputs[rows[:, :-1]]), z[rows[:, 1:]]).item()

    hard, zeroed = loss("hard"), loss("zeroed")
    assert hard < 0.5 * zeroed, (hard, zeroed)  # measured: 0.018 against 0.048 (seeds 0-3: ratio 0.36-0.45)


def test_a_bad_pooling_is_named():
    with pytest.raises(ValueError, match="pooling must be one of attention, max, got 'mean'"):
        EpisodicConfig(pooling="mean")
    with pytest.raises(ValueError, match="pool_dim must be >= 1"):
        EpisodicConfig(pooling="max", pool_dim=0)


def test_an_unknown_readout_mode_is_named():
    memory = EpisodicMemory(EpisodicConfig(latent_dim=8, hidden=16))
    with pytest.raises(LeWorldError, match="'blurred'"):
        memory_extra(memory, _delayed_task(2, seed=0), "blurred")


def test_privileged_regression_makes_the_readout_tell_the_hidden_bit():
    """RMA-style: the hidden bit supervises the first readout channel in training only; at inference
    the hard readout after the bit has shown tells it on held-out episodes, and before it cannot."""
    train, held_out = _delayed_task(64, seed=0), _delayed_task(32, seed=1)
    base = ModelConfig(latent_dim=8, predictor_dim=32, predictor_depth=1, predictor_heads=2, projector_hidden=32)
    memory_cfg = EpisodicConfig(latent_dim=8, hidden=64, channels=2)
    cfg = EpisodicTrainConfig(steps=250, episodes=16, windows=128, learning_rate=3e-3, privileged_weight=1.0)
    memory, _, last = train_episodic(train, base, memory_cfg, cfg, privileged=train.physics)
    assert "privileged" in last
    extra = memory_extra(memory, held_out, "hard").reshape(32, 40, 2)
    bits = held_out.physics[:, 0]
    assert np.mean(np.sign(extra[:, 30, 0]) == bits) >= 0.9  # after frame 5's bump (measured: 1.0, seeds 0-1)
    assert np.mean(np.sign(extra[:, 3, 0]) == bits) < 0.8  # before it, nothing to tell (0.44, 0.47)
    with pytest.raises(LeWorldError, match="privileged facts must be"):
        train_episodic(train, base, memory_cfg, cfg, privileged=np.zeros((3, 1)))

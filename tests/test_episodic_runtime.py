"""The episodic memory model behind the runtime interface, and the bit memory the envs carry per episode:
the runtime's reads and writes are the training path's hard reads, the dream empties an episode's memory
at its start and keeps it across steps, a batch's memories are independent, the real twin writes its frames."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import leworld_env  # noqa: F401  (registers the envs)
import world_models
from leworld_env.envs.pusht import LeWorldPushTRealEnv
from leworld_env.envs.vector import LeWorldPushTVectorEnv
from world_models.errors import LeWorldError
from world_models.memory.conditioned import conditioned_predictor
from world_models.memory.episodic import EpisodicConfig, EpisodicMemory, hard_reads
from world_models.memory.episodic_runtime import EpisodicRuntime, save_episodic

CHANNELS = 3


@pytest.fixture(scope="module")
def episodic_folder(tmp_path_factory):
    """An untrained episodic model over pusht-tiny's encoder, with random routing so records spread
    over chunks (a fresh one writes and reads chunk 0 only)."""
    base = world_models.load("pusht-tiny", backend="numba").config
    torch.manual_seed(0)
    memory = EpisodicMemory(EpisodicConfig(latent_dim=base.latent_dim, channels=CHANNELS))
    with torch.no_grad():
        for head in (memory.chunk_head, memory.read_chunk):
            head.weight.normal_(0, 0.5)
    predictor = conditioned_predictor(base, 3, CHANNELS, seed=0)
    folder = tmp_path_factory.mktemp("models") / "episodic"
    save_episodic(folder, memory, predictor, "pusht-tiny")
    return folder, memory.eval(), predictor.eval()


def _episode(seed: int, length: int = 30, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (length, dim)).astype(np.float32), rng.uniform(-1, 1, (length, 2)).astype(np.float32)


def test_written_records_pool_as_softmax_attention_over_their_signs():
    from numba_kernels import bitmem
    from numba_kernels.records import pool_records, write_records

    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], (3, 64, 128)).astype(np.float32)
    signs[..., 127] = np.where(rng.random((3, 64)) < 0.5, 1.0, -1.0)  # the written flags
    signs[2, :, 127] = -1.0  # env 2 holds nothing
    memory = bitmem.new_memory(3)
    base = np.array([0, 512, 1024])
    for r in range(64):
        write_records(memory, base + 4 * r, signs[:, r], np.ones(3, bool))
    assert np.array_equal(bitmem.unpack_bits(memory[:, 512:516])[1], (signs[1, 0] > 0).astype(np.uint8))
    query = rng.normal(0, 0.3, (3, 128)).astype(np.float32)
    pooled = pool_records(memory, np.arange(3), base, 64, query)
    for e in range(2):
        rows = signs[e][signs[e, :, 127] > 0]
        weights = np.exp(rows @ query[e] - (rows @ query[e]).max())
        np.testing.assert_allclose(pooled[e], weights @ rows / weights.sum(), atol=1e-5)
    assert not pooled[2].any()
    with pytest.raises(ValueError, match="query must be float32"):
        pool_records(memory, np.arange(3), base, 64, query[:2])
    with pytest.raises(ValueError, match="outside the memory"):
        pool_records(memory, np.arange(3), base + 65536, 64, query)


def test_written_records_max_pool_as_the_max_of_their_projection():
    """The packed max pooling (through byte tables) is max over written rows of W r + b, 0 for none."""
    from numba_kernels import bitmem
    from numba_kernels.records import byte_tables, max_pool_records, write_records

    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], (3, 64, 128)).astype(np.float32)
    signs[..., 127] = np.where(rng.random((3, 64)) < 0.5, 1.0, -1.0)
    signs[2, :, 127] = -1.0  # env 2 holds nothing
    memory = bitmem.new_memory(3)
    base = np.array([0, 512, 1024])
    for r in range(64):
        write_records(memory, base + 4 * r, signs[:, r], np.ones(3, bool))
    weight = rng.normal(0, 0.3, (5, 128)).astype(np.float32)
    bias = rng.normal(0, 1, 5).astype(np.float32)
    pooled = max_pool_records(memory, np.arange(3), base, 64, byte_tables(weight), bias)
    for e in range(2):
        rows = signs[e][signs[e, :, 127] > 0]
        np.testing.assert_allclose(pooled[e], (rows @ weight.T + bias).max(0), atol=1e-4)
    assert not pooled[2].any()
    with pytest.raises(ValueError, match="tables must be float32"):
        max_pool_records(memory, np.arange(3), base, 64, byte_tables(weight), bias[:4])
    with pytest.raises(ValueError, match="weight must be"):
        byte_tables(weight[:, :64])


def test_a_max_pooling_runtime_reads_as_training_does(tmp_path):
    base = world_models.load("pusht-tiny", backend="numba").config
    torch.manual_seed(1)
    memory = EpisodicMemory(EpisodicConfig(latent_dim=base.latent_dim, channels=CHANNELS, pooling="max"))
    with torch.no_grad():
        for head in (memory.chunk_head, memory.read_chunk):
            head.weight.normal_(0, 0.5)
    save_episodic(tmp_path / "max", memory, conditioned_predictor(base, 3, CHANNELS, seed=0), "pusht-tiny")
    model = world_models.load(tmp_path / "max")
    assert json.loads((tmp_path / "max" / "config.json").read_text())["memory"]["pooling"] == "max"
    z, a = _episode(2)
    want = memory.eval().readout(torch.from_numpy(hard_reads(memory, z, a))).detach().numpy()
    store, got = model.new_memory(1), []
    for t in range(len(z)):
        got.append(model.read(store, [0], z[max(t - 1, 0)][None], z[t][None])[0])
        if t < len(z) - 1:
            model.observe(store, [0], z[t][None], a[t][None], z[t + 1][None])
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    assert np.unique(store.writes.nonzero()[1]).size > 1 and np.abs(np.array(got) - got[0]).max() > 1e-3


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_runtime_reads_and_predicts_as_training_does(episodic_folder, backend):
    folder, memory, predictor = episodic_folder
    model = world_models.load(folder, backend=backend)
    assert isinstance(model, EpisodicRuntime) and model.backend == backend and model.config.history == 3
    z, a = _episode(0)
    want = memory.readout(torch.from_numpy(hard_reads(memory, z, a))).detach().numpy()
    store, got = model.new_memory(1), []
    for t in range(len(z)):
        got.append(model.read(store, [0], z[max(t - 1, 0)][None], z[t][None])[0])
        if t < len(z) - 1:
            model.observe(store, [0], z[t][None], a[t][None], z[t + 1][None])
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    assert np.unique(store.writes.nonzero()[1]).size > 1  # records went to several chunks
    extra = np.array(got)[None, 10:13]
    with torch.no_grad():
        inputs = torch.from_numpy(np.concatenate([a[None, 10:13], extra], axis=-1))
        expected = predictor(torch.from_numpy(z[None, 10:13]), inputs)[:, -1].numpy()
    np.testing.assert_allclose(model.predict_with(z[None, 10:13], a[None, 10:13], extra), expected, atol=1e-5)
    # the stateless predict is the empty memory's
    empty = np.repeat(model.empty_readout(1)[:, None], 3, axis=1)
    stateless = model.predict(z[None, :3], a[None, :3])
    np.testing.assert_allclose(stateless, model.predict_with(z[None, :3], a[None, :3], empty))


def test_the_dream_empties_the_memory_at_reset_and_keeps_it_across_steps(episodic_folder):
    folder = episodic_folder[0]
    env = gym.make("LeWorld-PushT-v0", model=str(folder))
    batch = env.unwrapped.episodes
    env.reset(seed=0)
    assert not batch.memory.words.any() and batch.memory.writes.sum() == 0
    steps = 5
    for _ in range(steps):
        env.step(env.action_space.sample())
    per_step = batch.setup.predicts_per_step
    assert batch.memory.writes.sum() == steps * per_step  # one record per model step, none lost
    first = batch.memory.words.copy()
    env.step(env.action_space.sample())
    kept = first != 0
    assert kept.any() and np.array_equal(batch.memory.words[kept], first[kept])  # earlier records survive
    env.reset(seed=1)
    assert not batch.memory.words.any() and batch.memory.writes.sum() == 0
    env.close()


def test_a_vector_envs_memories_are_independent(episodic_folder):
    folder = episodic_folder[0]
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 3, 2)).astype(np.float32)
    venv = LeWorldPushTVectorEnv(num_envs=3, model=str(folder), max_episode_steps=50)
    venv.reset(seed=10)
    for step in actions:
        venv.step(step)
    for i in range(3):  # each sub-env's memory is what a single env with its seed and actions writes
        env = gym.make("LeWorld-PushT-v0", model=str(folder), max_episode_steps=50)
        env.reset(seed=10 + i)
        for step in actions:
            env.step(step[i])
        single = env.unwrapped.episodes.memory
        assert np.array_equal(single.writes[0], venv.batch.memory.writes[i])
        assert np.count_nonzero(single.words[0] != venv.batch.memory.words[i]) <= 8  # float rounding of a batch
        env.close()
    venv.reset(options={"reset_mask": np.array([False, True, False])})
    assert not venv.batch.memory.words[1].any() and venv.batch.memory.words[[0, 2]].any(axis=1).all()


def test_the_sb3_vec_env_empties_a_finished_episodes_memory(episodic_folder):
    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    venv = LeWorldSB3VecEnv(num_envs=2, model=str(episodic_folder[0]), max_episode_steps=3)
    venv.reset()
    for _ in range(2):
        venv.step(np.zeros((2, 2), np.float32))
    assert (venv.batch.memory.writes.sum(1) == 2 * venv.setup.predicts_per_step).all()
    _, _, dones, _ = venv.step(np.zeros((2, 2), np.float32))
    assert dones.all() and venv.batch.memory.writes.sum() == 0 and not venv.batch.memory.words.any()


def test_the_real_twin_writes_its_encoded_frames(episodic_folder):
    folder = episodic_folder[0]
    env = LeWorldPushTRealEnv(model=str(folder))
    env.reset(seed=0)
    assert env.memory.writes.sum() == 0
    for _ in range(3):
        env.step(np.array([0.5, -0.5], np.float32))
    assert env.memory.writes.sum() == 3 * env.setup.predicts_per_step and env.memory.words.any()
    env.reset(seed=1)
    assert not env.memory.words.any()
    env.close()


def test_bad_episodic_folders_and_backends_are_named(episodic_folder, tmp_path):
    folder = episodic_folder[0]
    with pytest.raises(LeWorldError, match="numba-q4"):
        world_models.load(folder, backend="numba-q4")
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["memory"]["chunks"] = 7
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(LeWorldError, match=r"config\.json: 'memory'"):
        world_models.load(broken)
    config["memory"].pop("chunks")
    config["memory"]["pooling"] = "mean"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(LeWorldError, match=r"config\.json: 'memory': pooling must be one of attention, max"):
        world_models.load(broken)

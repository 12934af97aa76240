"""The LeWorld memory model: reads, routing, info request, the three phases, the folder and the CLI (tiny presets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from world_models.data.latents import LatentEpisodes
from world_models.errors import LeWorldError
from world_models.memory.model import (
    ABLATIONS,
    DYN_RECORDS,
    HIST_WORDS,
    RECORD_BITS,
    RECORD_WORDS,
    LeWorldMemory,
    Memory,
    count_parameters,
    gumbel_sigmoid_mask,
    init_weights,
    memory_preset,
)
from world_models.memory.runtime import encode_dataset
from world_models.memory.train import (
    MemoryTrainConfig,
    dynamics_transitions,
    phase_step,
    query_parameters,
    rollout_loss,
    sample_windows,
    trainable,
)

torch.set_num_threads(1)


def synthetic_latents(episodes: int = 8, length: int = 24, dim: int = 64, seed: int = 0) -> LatentEpisodes:
    """Linear dynamics z' = 0.9 z + a W_e with a per-episode W_e (a hidden physics)."""
    rng = np.random.default_rng(seed)
    zs, acts = [], []
    for _ in range(episodes):
        a = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
        w = (rng.normal(size=(2, dim)) * 0.3).astype(np.float32)
        z = np.zeros((length, dim), np.float32)
        z[0] = rng.normal(size=dim)
        for t in range(1, length):
            z[t] = 0.9 * z[t - 1] + a[t - 1] @ w
        a[-1] = np.nan
        zs.append(z)
        acts.append(a)
    starts = np.arange(0, episodes * length + 1, length)
    return LatentEpisodes(np.concatenate(zs), np.concatenate(acts), starts, np.zeros((episodes, 0), np.float32))


@pytest.fixture(scope="module")
def latents() -> LatentEpisodes:
    return synthetic_latents()


@pytest.fixture()
def model(latents) -> LeWorldMemory:
    torch.manual_seed(0)
    m = LeWorldMemory(memory_preset("tiny"))
    init_weights(m)
    dyn = dynamics_transitions(latents, 0)  # ~180 transitions, tiled so that random reads find records
    m.write_dynamics(dyn.repeat(DYN_RECORDS // len(dyn) + 1, 1)[:DYN_RECORDS])
    return m


CFG = MemoryTrainConfig(data="", out="", batch_size=8, horizon=3, phase_steps=(4, 4, 4))


def fixed_batch(latents: LatentEpisodes, horizon: int) -> dict[str, torch.Tensor]:
    return sample_windows(latents, CFG.batch_size, memory_preset("tiny").context, horizon, np.random.default_rng(0))


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_each_phase_reduces_its_loss_on_a_fixed_batch(model, latents, phase):
    dyn = dynamics_transitions(latents, 0)
    if phase >= 2:
        model.codec.requires_grad_(False)
    if phase == 3:  # as after phase 2: a prediction head that is no longer zero, so the query matters
        torch.nn.init.normal_(model.blm.head.weight, std=0.05)
    batch = fixed_batch(latents, 1 if phase == 1 else CFG.horizon)
    params = trainable(model, phase)
    opt = torch.optim.Adam(params, lr=3e-3 if phase < 3 else 1e-2)
    losses = []
    for step in range(6):
        gen = torch.Generator().manual_seed(0)  # the same Gumbel noise every step: a fixed objective
        out = phase_step(model, phase, batch, dyn, CFG, step, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_phase3_baseline_branch_gets_no_gradient_and_cannot_be_gamed(model, latents):
    model.codec.requires_grad_(False)
    torch.nn.init.normal_(model.blm.head.weight, std=0.05)
    batch = fixed_batch(latents, CFG.horizon)
    dyn = dynamics_transitions(latents, 0)
    before = phase_step(model, 3, batch, dyn, CFG, 0, torch.Generator())
    assert not before["prediction_without_query"].requires_grad  # computed under no_grad
    opt = torch.optim.Adam(trainable(model, 3), lr=1e-2)
    for _ in range(3):
        out = phase_step(model, 3, batch, dyn, CFG, 0, torch.Generator())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = phase_step(model, 3, batch, dyn, CFG, 0, torch.Generator())
    # Only the query path trains, and a zero query makes it the identity: the no-query branch is untouched.
    assert after["prediction_without_query"].item() == before["prediction_without_query"].item()
    assert after["prediction_with_query"].item() != before["prediction_with_query"].item()
    assert {id(p) for p in trainable(model, 3)} == {id(p) for p in query_parameters(model)}


def peaked(start: int) -> tuple[torch.Tensor, torch.Tensor]:
    high, low = torch.full((1, 256), -50.0), torch.full((1, 256), -50.0)
    high[0, start // 256] = 50.0
    low[0, start % 256] = 50.0
    return high, low


def test_hard_read_equals_soft_read_with_peaked_logits(model):
    rng = np.random.default_rng(1)
    b, hc = 2, model.cfg.context - 1
    hist = torch.from_numpy(rng.integers(0, 2, (b, hc, RECORD_BITS), dtype=np.uint8))
    hist[:, 10:, -1] = 0  # some empty records
    starts = [0, 40, HIST_WORDS + 8 * 100, HIST_WORDS + 8 * 6000]
    for hard_view in (False, True):
        memory = Memory(model.codec, model.dyn_bits, b, hard=hard_view)
        memory.set_history(hist)
        for k in range(3):
            for start in starts:
                high, low = peaked(start)
                high, low = high.expand(b, -1), low.expand(b, -1)
                query = torch.randn(b, model.cfg.record_dim)
                soft = model.read(k, memory, high, low, query, "soft")
                hard = model.read(k, memory, high, low, query, "hard")
                torch.testing.assert_close(soft, hard, atol=1e-5, rtol=1e-5)
    # The numba path's bits are the torch path's bits.
    memory = Memory(model.codec, model.dyn_bits, b, hard=True)
    memory.set_history(hist)
    bits, _, _ = memory.read_hard(np.array([0, 0]), 8 * hc)
    assert torch.equal(bits, hist)
    start = HIST_WORDS + 8 * 300
    bits, _, valid = memory.read_hard(np.array([start, start]), 256)
    assert torch.equal(bits[0], model.dyn_bits[300:332])
    assert valid.all()


def test_empty_memory_reads_as_nothing(model):
    memory = Memory(model.codec, torch.zeros(DYN_RECORDS, RECORD_BITS, dtype=torch.uint8), 1, hard=True)
    memory.set_history(torch.zeros(1, model.cfg.context - 1, RECORD_BITS, dtype=torch.uint8))
    high, low = peaked(HIST_WORDS + 64)
    for mode in ("soft", "hard"):
        out = model.read(2, memory, high, low, torch.randn(1, model.cfg.record_dim), mode)
        assert torch.count_nonzero(out) == 0


def test_straight_through_mask_is_exactly_binary_with_a_gradient():
    g = torch.randn(64, 3, requires_grad=True)
    for sample in (True, False):
        mask = gumbel_sigmoid_mask(g, tau=0.5, sample=sample, generator=torch.Generator().manual_seed(0))
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        (mask * torch.arange(3.0)).sum().backward()
        assert g.grad is not None and g.grad.abs().sum() > 0
        g.grad = None


def test_film_with_a_zero_query_is_the_identity(model):
    x = torch.randn(5, 3, model.cfg.slm_dim)
    for slm in model.slms:
        assert torch.equal(slm.film_tokens(x, torch.zeros(5, model.cfg.query_dim)), x)
        assert not torch.equal(slm.film_tokens(x, torch.randn(5, model.cfg.query_dim)), x)


def test_seed_preset_parameter_counts_are_near_the_seed_card():
    with torch.device("meta"):
        counts = count_parameters(LeWorldMemory(memory_preset("seed")))
    assert abs(counts["slm0"] - 745_000) / 745_000 < 0.05
    assert abs(counts["blm"] - 11_200_000) / 11_200_000 < 0.05
    assert abs(counts["codec"] - 21_000) / 21_000 < 0.15
    assert abs(counts["total"] - 13_500_000) / 13_500_000 < 0.05


def test_ablations_change_the_rollout(model, latents):
    from world_models.memory.evaluate import open_loop_error

    # A trained-looking head so the memory matters: random non-zero prediction head.
    torch.nn.init.normal_(model.blm.head.weight, std=0.05)
    full = open_loop_error(model, latents, horizons=(1, 3), max_windows=32)
    assert full["windows"] == 32 and len(full["usage"]) == 3
    for ablation in ABLATIONS:
        result = open_loop_error(model, latents, horizons=(1, 3), ablation=ablation, max_windows=32)
        if ablation in ("memory_zeroed", "memory_shuffled", "info_off"):
            assert result["mse"] != full["mse"], ablation
    with pytest.raises(LeWorldError, match="unknown ablation"):
        open_loop_error(model, latents, ablation="nope")


def test_model_folder_round_trip_and_runtime(model, latents, tmp_path):
    import world_models
    from world_models.memory.runtime import load_leworld, save_leworld

    torch.nn.init.normal_(model.blm.head.weight, std=0.05)
    save_leworld(tmp_path / "m", model, encoder_model="pusht-tiny")
    loaded, meta = load_leworld(tmp_path / "m")
    assert meta["kind"] == "leworld"
    assert torch.equal(loaded.dyn_bits, model.dyn_bits)
    wm = world_models.load(tmp_path / "m", backend="torch")
    c = wm.config.history
    assert c == model.cfg.context and wm.config.latent_dim == 64
    z, a = latents.z[:c][None], np.nan_to_num(latents.actions[:c])[None]
    pred = wm.predict(z, a)
    roll = wm.rollout(z, a, a[:, :4])
    assert pred.shape == (1, 64) and roll.shape == (1, 4, 64)
    np.testing.assert_allclose(roll[:, 0], pred, atol=1e-5)
    with torch.no_grad():
        ref, _ = model.rollout(
            torch.from_numpy(z), torch.from_numpy(a), torch.from_numpy(a[:, :4]), mode="hard", routing="deterministic"
        )
    np.testing.assert_allclose(roll, ref.numpy(), atol=1e-5)
    assert wm.probe(pred).shape == (1, 5)
    with pytest.raises(LeWorldError, match="backend"):
        world_models.load(tmp_path / "m", backend="numba-q4")


def test_errors_name_the_bad_value(latents):
    with pytest.raises(LeWorldError, match="unknown memory preset 'huge'"):
        memory_preset("huge")
    with pytest.raises(LeWorldError, match="long enough"):
        sample_windows(synthetic_latents(episodes=2, length=4), 4, 16, 8, np.random.default_rng(0))


def test_rollout_loss_matches_record_layout(model, latents):
    batch = fixed_batch(latents, CFG.horizon)
    loss, outs = rollout_loss(model, batch, CFG.horizon, routing="deterministic")
    assert len(outs) == CFG.horizon and torch.isfinite(loss)
    assert (outs[0].starts % RECORD_WORDS == 0).all()


def test_cli_trains_three_phases_end_to_end(short_dataset, tmp_path):
    import world_models

    out = tmp_path / "run"
    args = ["train", "--world-model", "leworld", "--data", str(short_dataset), "--out", str(out)]
    result = run_cli(*args, "--phase-steps", "2", "2", "2", "--batch-size", "4", "--horizon", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "memory.safetensors").is_file() and (out / "tb").is_dir()
    wm = world_models.load(out / "model")
    assert wm.config.history == memory_preset("tiny").context
    # TensorBoard: losses per phase, SLM usage, routing entropy, address coverage, info-request gain.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tb").glob("events.out.tfevents.*")))).Reload()
    tags = set(events.Tags()["scalars"])
    for phase in (1, 2, 3):
        assert f"phase{phase}/loss" in tags, sorted(tags)
    assert any(t.startswith("phase2/usage") for t in tags) and any(t.startswith("phase2/routing") for t in tags)
    assert any(t.startswith("phase2/coverage") for t in tags) and "phase3/info_gain" in tags
    assert any(t.startswith("eval/hard_soft_") for t in tags)
    # The dream env runs on it: each step is the model's predict on the env's own padded history.
    import gymnasium as gym

    import leworld_env

    env = gym.make(leworld_env.DREAM_ID, model=str(out / "model"), goal="dataset")  # no backend: load picks
    obs, _ = env.reset(seed=0)
    z0 = obs["observation"].copy()
    action = np.array([0.5, -0.25], np.float32)
    obs, reward, *_ = env.step(action)
    c = wm.config.history
    a_hist = np.zeros((1, c, 2), np.float32)
    a_hist[0, -1] = action
    expected = wm.predict(np.repeat(z0[None, None], c, axis=1), a_hist)[0]
    np.testing.assert_allclose(obs["observation"], expected, atol=1e-5)
    assert np.isfinite(reward)
    env.close()
    bad = run_cli(*args[:-1], str(tmp_path / "other"), "--memory-preset", "huge", "--quiet")
    assert bad.returncode == 2 and "unknown memory preset 'huge'" in bad.stderr


def test_encode_dataset_reads_model_steps(short_dataset):
    lat = encode_dataset(short_dataset)
    assert lat.latent_dim == 64 and lat.num_episodes == 10
    first_len = lat.lengths()[0]
    assert np.isnan(lat.actions[first_len - 1]).all() and not np.isnan(lat.actions[: first_len - 1]).any()
    assert lat.physics.shape == (10, 0)

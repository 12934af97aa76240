"""Agent files: no code runs from a file. Agents are written and read as agent folders (JSON and
safetensors); an SB3 ``.zip`` (unpickled as it loads) only with ``trust_pickle``; hyperparameter files
and planner observations of the wrong kind are refused with errors that name what is wrong."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

import world_models
from agents.evaluate import evaluate, load_agent
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.errors import ArgumentError, LeWorldError

# PPO small enough to train a few hundred steps in seconds.
TINY_PPO = """LeWorld-PushT-v0:
  n_envs: 4
  n_timesteps: 256
  policy: MultiInputPolicy
  env_kwargs: {goal: dataset, reward: coverage, max_episode_steps: 10}
  n_steps: 32
  batch_size: 64
  n_epochs: 1
  policy_kwargs: {net_arch: [32, 32]}
"""


@pytest.fixture(scope="module")
def wm():
    return world_models.load()


@pytest.fixture(scope="module")
def dream():
    from leworld_env.sb3 import LeWorldSB3VecEnv

    env = LeWorldSB3VecEnv(num_envs=4, goal="dataset", reward="coverage", max_episode_steps=10)
    env.seed(0)
    yield env
    env.close()


# ------------------------------------------------------------------ a crafted SB3 zip
class _Payload:
    """Unpickling this creates the file ``path`` (what a crafted file could do instead: anything)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def crafted_zip(path: Path, sentinel: Path) -> Path:
    """An SB3-style ``.zip`` whose ``data`` holds a ``:serialized:`` (base64 pickle) entry that runs code."""
    payload = base64.b64encode(pickle.dumps(_Payload(sentinel))).decode()
    data = {
        "policy_class": {
            ":type:": "<class 'abc.ABCMeta'>",
            ":serialized:": payload,
            "__module__": "stable_baselines3.common.policies",
        },
        "observation_space": {":type:": "<class 'gymnasium.spaces.dict.Dict'>", ":serialized:": payload},
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps(data))
        archive.writestr("_stable_baselines3_version", "2.9.2")
    return path


def test_a_crafted_zip_is_refused_without_unpickling(tmp_path, wm):
    sentinel = tmp_path / "sentinel"
    zipped = crafted_zip(tmp_path / "crafted.zip", sentinel)
    with pytest.raises(LeWorldError, match=r"unpickled .*--trust-pickle"):
        load_agent(str(zipped), wm)
    assert not sentinel.exists()
    # The file is a real threat: where the user says they trust it, it is unpickled and its code runs.
    with pytest.raises(LeWorldError):
        load_agent(str(zipped), wm, trust_pickle=True)
    assert sentinel.exists()


def test_leworld_eval_refuses_a_crafted_zip_in_one_line(tmp_path):
    sentinel = tmp_path / "sentinel"
    zipped = crafted_zip(tmp_path / "crafted.zip", sentinel)
    result = run_cli("eval", "--agent", str(zipped), "--episodes", "1")
    assert_one_line_error(result, "crafted.zip", "unpickled", "--trust-pickle")
    assert not sentinel.exists()


def test_trust_pickle_is_on_every_command_that_loads_an_agent(capsys):
    from leworld_env.cli.main import build_parser

    for command in ("eval", "play", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "--trust-pickle" in capsys.readouterr().out, command


# ------------------------------------------------------------------ agent folders
@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_an_agent_folder_acts_as_the_agent_did(tmp_path, wm, dream, algo):
    """Trained briefly, saved as a folder, read back without pickle: the same actions on the same observations."""
    import stable_baselines3

    from agents.policy_files import AGENT_JSON, POLICY_FILE, save_agent

    kwargs = (
        {"n_steps": 16, "batch_size": 32, "n_epochs": 1}
        if algo == "PPO"
        else {"learning_starts": 8, "buffer_size": 500}
    )
    algorithm = getattr(stable_baselines3, algo)
    agent = algorithm(
        "MultiInputPolicy", dream, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]}, **kwargs
    )  # fmt: skip
    agent.learn(96)
    folder = save_agent(agent, tmp_path / "agent", {"model": "pusht-tiny"})
    assert sorted(p.name for p in folder.iterdir()) == [AGENT_JSON, POLICY_FILE]
    observations = [dream.reset()]
    for _ in range(3):
        observations.append(dream.step(np.random.default_rng(0).uniform(-1, 1, (4, 2)))[0])
    for path in (folder, folder / AGENT_JSON, folder / POLICY_FILE):
        loaded = load_agent(str(path), wm)
        assert loaded.algorithm == algo and loaded.num_timesteps == agent.num_timesteps
        for obs in observations:
            expected, _ = agent.predict(obs, deterministic=True)
            actual, _ = loaded.predict(obs, deterministic=True)
            np.testing.assert_array_equal(actual, expected)
    assert evaluate(loaded, algo, "real", "lewm", episodes=1, seed=0, progress=False).decisions > 0


def test_a_changed_agent_folder_is_refused(tmp_path, dream):
    from stable_baselines3 import PPO

    from agents.policy_files import AGENT_JSON, POLICY_FILE, load_policy, save_agent

    agent = PPO("MultiInputPolicy", dream, n_steps=8, batch_size=32, seed=0, device="cpu")
    folder = save_agent(agent, tmp_path / "agent")
    blob = bytearray((folder / POLICY_FILE).read_bytes())
    blob[-1] ^= 1
    (folder / POLICY_FILE).write_bytes(bytes(blob))
    with pytest.raises(LeWorldError, match="does not match the checksum"):
        load_policy(folder)
    save_agent(agent, folder)  # an agent folder is replaced as a whole
    config = json.loads((folder / AGENT_JSON).read_text())
    config["policy_kwargs"]["activation_fn"] = "os.system"
    (folder / AGENT_JSON).write_text(json.dumps(config))
    with pytest.raises(LeWorldError, match=r"activation_fn is 'os.system'; expected one of: ReLU"):
        load_policy(folder)


# ------------------------------------------------------------------ train-agent: checkpoints and resume
def _config(tmp_path: Path, **changes):
    from agents.train_agent import TrainAgentConfig

    hyperparams = tmp_path / "tiny-ppo.yml"
    hyperparams.write_text(TINY_PPO)
    settings = {
        "algo": "ppo", "out": tmp_path / "run", "eval_every": 128, "eval_episodes": 1, "checkpoint_every": 128,
        "progress": False, "hyperparams": hyperparams,
    }  # fmt: skip
    return TrainAgentConfig(**{**settings, **changes})


def test_train_agent_writes_agent_folders_and_resume_continues(tmp_path, wm, capsys):
    from agents.policy_files import AGENT_JSON, POLICY_FILE, read_agent_config
    from agents.train_agent import latest_checkpoint, train_agent
    from world_models.files import read_safetensors
    from world_models.outputs import marker_kind

    out = tmp_path / "run"
    final = train_agent(_config(tmp_path))
    assert final == out / "model" and marker_kind(out) == "agent-run"
    assert not list(out.rglob("*.zip")) and not list(out.rglob("*.pkl"))  # nothing written is unpickled
    assert (out / "best" / AGENT_JSON).is_file()
    first = latest_checkpoint(out / "checkpoints")
    steps = read_agent_config(first)["num_timesteps"]
    assert steps >= 256 and first.name == f"agent_{steps}_steps"
    assert load_agent(str(final), wm).num_timesteps == steps

    # Nothing left to do: the resumed agent is the checkpoint's (its weights were restored, not re-drawn).
    before = read_safetensors(first / POLICY_FILE, "pt")
    again = train_agent(_config(tmp_path, timesteps=steps, resume=True))
    assert f"resuming from {first.name} at {steps} steps; 0 to go" in capsys.readouterr().out
    after = read_safetensors(again / POLICY_FILE, "pt")
    assert before.keys() == after.keys() and all(bool((before[k] == after[k]).all()) for k in before)

    resumed = train_agent(_config(tmp_path, timesteps=steps + 128, resume=True))
    assert read_agent_config(resumed)["num_timesteps"] >= steps + 128
    newest = latest_checkpoint(out / "checkpoints")
    assert read_agent_config(newest)["training"]["n_updates"] > read_agent_config(first)["training"]["n_updates"]


def test_train_agent_refuses_an_output_folder_it_may_not_write(tmp_path):
    from agents.train_agent import train_agent

    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(LeWorldError, match=r"--out .*run: exists and is not empty.*--resume"):
        train_agent(_config(tmp_path))
    with pytest.raises(LeWorldError, match="refusing to replace it"):
        train_agent(_config(tmp_path, overwrite=True))
    with pytest.raises(LeWorldError, match="no checkpoint to resume from"):
        train_agent(_config(tmp_path, resume=True))
    (mine / "checkpoints").mkdir()
    (mine / "checkpoints" / "agent_64_steps.zip").write_bytes(b"PK")
    with pytest.raises(LeWorldError, match=r"only SB3 \.zip checkpoints .*unpickles"):
        train_agent(_config(tmp_path, resume=True))
    assert (mine / "notes.txt").read_text() == "mine"


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path, monkeypatch):
    """SIGTERM during training acts as Ctrl-C: a checkpoint of the steps so far, then KeyboardInterrupt."""
    from stable_baselines3.common.callbacks import BaseCallback

    import agents.train_agent as train_module
    from agents.policy_files import read_agent_config

    class Terminate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 96:
                os.kill(os.getpid(), signal.SIGTERM)
            return True

    monkeypatch.setattr(train_module, "checkpoint_callback", lambda *args: Terminate())
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_agent(_config(tmp_path, checkpoint_every=10_000))
    assert signal.getsignal(signal.SIGTERM) is previous
    checkpoint = train_module.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint is not None and read_agent_config(checkpoint)["num_timesteps"] >= 96


# ------------------------------------------------------------------ hyperparameter files
@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ("n_envs: abc", ["field 'n_envs' is 'abc'", "an integer >= 1"]),
        ("n_envs: 2.5", ["field 'n_envs' is 2.5", "an integer >= 1"]),
        ("n_timesteps: -5", ["field 'n_timesteps' is -5", "an integer >= 1"]),
        ("env_kwargs: [1]", ["field 'env_kwargs' is [1]", "a mapping"]),
        ("learning_rate: 3e-4", ["field 'learning_rate' is '3e-4'", "write 0.0003"]),
        ("gamma: 1.5", ["field 'gamma' is 1.5", "in [0, 1]"]),
        ("normalize: true", ["unknown field 'normalize'", "n_envs"]),
        ("policy_kwargs: {activation_fn: os.system}", ["activation_fn is 'os.system'", "ReLU"]),
        ("policy_kwargs: {net_arch: [0]}", ["net_arch: [0]", "layer widths >= 1"]),
        ("policy_kwargs: {pickle: 1}", ["unknown policy argument 'pickle'"]),
    ],
)
def test_a_hyperparameter_of_the_wrong_kind_names_the_field(tmp_path, entry, fragments):
    from agents.train_agent import load_hyperparams, train_agent

    path = tmp_path / "bad.yml"
    path.write_text(f"LeWorld-PushT-v0:\n  policy: MultiInputPolicy\n  {entry}\n")
    with pytest.raises(LeWorldError) as caught:
        load_hyperparams("ppo", path)
    message = str(caught.value)
    assert "bad.yml" in message and all(f in message for f in fragments), message
    with pytest.raises(LeWorldError, match=r"bad\.yml"):  # refused before anything is built or written
        train_agent(_config(tmp_path, hyperparams=path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- 1\n- 2\n", "got list"),
        ("LeWorld-PushT-v0: [1]\n", "entry 'LeWorld-PushT-v0': expected a mapping, got list"),
        ("LeWorld-PushT-v0: {ent_coef: -1}\n", "field 'ent_coef' is -1"),
    ],
)
def test_a_hyperparameter_file_of_the_wrong_shape_is_refused(tmp_path, text, fragment):
    from agents.train_agent import load_hyperparams

    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(LeWorldError, match=r"bad\.yml") as caught:
        load_hyperparams("ppo", path)
    assert fragment in str(caught.value)


def test_sac_fields_are_checked_as_sac_reads_them(tmp_path):
    from agents.train_agent import HYPERPARAMS_DIR, load_hyperparams

    assert load_hyperparams("her-sac")["replay_buffer_class"] == "HerReplayBuffer"
    path = tmp_path / "sac.yml"
    text = (HYPERPARAMS_DIR / "sac.yml").read_text()
    path.write_text(text.replace("train_freq: 1", "train_freq: [1, episode]"))
    assert load_hyperparams("sac", path)["train_freq"] == (1, "episode")
    path.write_text(text.replace("tau: 0.005", "tau: fast"))
    with pytest.raises(LeWorldError, match=r"sac.yml: field 'tau' is 'fast'; expected a number in \(0, 1\]"):
        load_hyperparams("sac", path)


# ------------------------------------------------------------------ planners refuse what they cannot plan for
def _goal_observation(wm, **changes):
    width = wm.config.latent_dim + 4
    obs = {
        "observation": np.zeros(wm.config.history * wm.config.latent_dim, np.float32),
        "achieved_goal": np.zeros(width, np.float32),
        "desired_goal": np.full(width, 0.5, np.float32),
    }
    obs.update(changes)
    return obs


@pytest.mark.parametrize("name", ["cem", "mppi", "random"])
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("desired_goal", np.nan, "holds NaN or inf"),
        ("achieved_goal", np.inf, "holds NaN or inf"),
        ("observation", -np.inf, "holds NaN or inf"),
        ("desired_goal", 1j, "complex"),
    ],
)
def test_planners_refuse_a_goal_they_cannot_plan_for(wm, name, key, value, fragment):
    bad = _goal_observation(wm)
    bad[key] = bad[key] + value  # one bad array: NaN, inf, or complex numbers
    agent = load_agent(name, wm, seed=0, samples=8, iterations=1, **({"topk": 2} if name == "cem" else {}))
    with pytest.raises(ArgumentError, match=rf"observation\['{key}'\] .*{fragment}"):
        agent.predict(bad, episode_start=np.array([True]))
    action, _ = agent.predict(_goal_observation(wm), episode_start=np.array([True]))  # a good one still plans
    assert action.shape == (2,) and np.all(np.isfinite(action))

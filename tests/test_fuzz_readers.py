"""Every file reader, fuzzed: a clean ``LeWorldError`` naming the file, never another exception,
never a silent success on a file that cannot be right.

Each reader (model folders, LQ40, start banks, latents, checkpoints, datasets, YAML, agent folders)
gets a valid file this package wrote, then hypothesis edits it: truncation, random
bytes, byte flips (anywhere, and in the first kilobytes where headers live), inserted bytes, and
for JSON and YAML files edits of the document (a field replaced by a value of another kind,
removed, added; the document not an object). What must fail:

* truncation and garbage always (every format here has a length, a checksum or a closing brace);
* for model folders, any change to the weights (the config's checksum) and any change of a
  field's kind, a missing or an unknown field, a non-finite number;
* everything else may load, when the file is still a valid one.

Examples per reader: ``LEWORLD_FUZZ_EXAMPLES`` (default 50), derandomized, so CI runs the same
cases every time in bounded time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_numba_backend import model_dir  # noqa: F401  (fixture)
from world_models.errors import LeWorldError

EXAMPLES = int(os.environ.get("LEWORLD_FUZZ_EXAMPLES", "50"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEADER_BYTES = 4096  # where headers live: flips here hit structure, not payload


# ------------------------------------------------------------------ edits
@st.composite
def edited_bytes(draw: st.DrawFn, original: bytes) -> tuple[bytes, bool]:
    """An edit of ``original`` and whether a reader must refuse it (truncation, garbage)."""
    kind = draw(st.sampled_from(["truncate", "garbage", "flip", "flip-header", "insert"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))]), True
    if kind == "garbage":
        return draw(st.binary(max_size=512)), True
    if kind == "insert":
        where = draw(st.integers(0, len(data)))
        data[where:where] = draw(st.binary(min_size=1, max_size=16))
        return bytes(data), False
    top = min(len(data), HEADER_BYTES) if kind == "flip-header" else len(data)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, top - 1))
        data[where] ^= draw(st.integers(1, 255))
    return bytes(data), False


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=4,
)


def same_kind(old: Any, new: Any) -> bool:
    """Whether ``new`` is the JSON kind ``old`` is (an int is also a float)."""

    def kind(value: Any) -> str:
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        return type(value).__name__

    return kind(old) == kind(new) or (kind(old) == "float" and kind(new) == "int")


@st.composite
def edited_document(draw: st.DrawFn, original: dict, strict: bool) -> tuple[Any, bool]:
    """An edit of the JSON object ``original`` and whether a reader must refuse it.

    ``strict``: the reader knows every field (a config): a missing or unknown field, a value of
    another kind or a non-finite number must be refused. Otherwise only a non-object must be.
    """
    document = dict(original)
    kind = draw(st.sampled_from(["replace", "replace", "delete", "add", "not-object"]))
    if kind == "not-object" or not document:
        return draw(st.one_of(st.lists(JSON_VALUES, max_size=3), st.integers(), st.text(max_size=5))), True
    key = draw(st.sampled_from(sorted(document)))
    if kind == "delete":
        del document[key]
        return document, strict
    if kind == "add":
        name = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in document))
        document[name] = draw(JSON_VALUES)
        return document, strict
    old, new = document[key], draw(JSON_VALUES)
    document[key] = new
    non_finite = isinstance(new, float) and not math.isfinite(new)
    return document, strict and (not same_kind(old, new) or non_finite)


def expect_clean(read: Callable[[], Any], path: Path, must_fail: bool) -> None:
    """``read()`` succeeds (unless ``must_fail``) or raises a LeWorldError naming ``path`` or its folder."""
    try:
        read()
    except LeWorldError as err:
        message = str(err)
        assert path.name in message or path.parent.name in message, f"error does not name {path}: {message}"
        assert "\n" not in message.strip(), f"not one line: {message!r}"
        return
    assert not must_fail, f"{path}: a file that cannot be right was read without an error"


def fuzz_bytes(data: st.DataObject, original: bytes, path: Path, read: Callable[[Path], Any]) -> None:
    """Write an edit of ``original`` to ``path`` and hold ``read(path)`` to :func:`expect_clean`."""
    blob, must_fail = data.draw(edited_bytes(original))
    path.write_bytes(blob)
    expect_clean(lambda: read(path), path, must_fail)


def fresh_copy(source: Path, folder: Path) -> Path:
    """``source`` (a folder) copied to ``folder``, replacing what a previous example left."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    return folder


# ------------------------------------------------------------------ model folders
@fuzz
@given(data=st.data())
def test_config_json(model_dir, tmp_path, data):  # noqa: F811
    from world_models.lewm.folder import load_model

    folder = fresh_copy(model_dir, tmp_path / "fuzzed-model")
    path = folder / "config.json"
    if data.draw(st.booleans()):
        document, must_fail = data.draw(edited_document(json.loads(path.read_text()), strict=True))
        path.write_text(json.dumps(document))
    else:
        blob, must_fail = data.draw(edited_bytes(path.read_bytes()))
        path.write_bytes(blob)
    expect_clean(lambda: load_model(folder), path, must_fail)


@fuzz
@given(data=st.data())
def test_probe_json(model_dir, tmp_path, data):  # noqa: F811
    from world_models.lewm.folder import load_model

    folder = fresh_copy(model_dir, tmp_path / "fuzzed-model")
    path = folder / "probe.json"
    if data.draw(st.booleans()):
        original = json.loads(path.read_text())
        document, _ = data.draw(edited_document(original, strict=False))
        # the probe's width must be a positive whole number; a non-object is never a probe description
        must_fail = not isinstance(document, dict) or not (
            isinstance(document.get("hidden", 256), int) and not isinstance(document.get("hidden"), bool)
        )
        path.write_text(json.dumps(document))
    else:
        blob, must_fail = data.draw(edited_bytes(path.read_bytes()))
        path.write_bytes(blob)
    expect_clean(lambda: load_model(folder), path, must_fail)


@fuzz
@given(data=st.data())
@pytest.mark.parametrize("name", ["model.safetensors", "probe.safetensors"])
def test_weights_safetensors(model_dir, tmp_path, data, name):  # noqa: F811
    """A model folder's weights are guarded by a checksum: every edit must be refused."""
    from world_models.lewm.folder import load_model

    folder = fresh_copy(model_dir, tmp_path / "fuzzed-model")
    path = folder / name
    original = path.read_bytes()
    blob, _ = data.draw(edited_bytes(original))
    path.write_bytes(blob)
    expect_clean(lambda: load_model(folder), path, must_fail=blob != original)  # two flips may cancel


@fuzz
@given(data=st.data())
def test_lq40(model_dir, tmp_path_factory, data):  # noqa: F811
    from world_models.backends.lq40 import read_model
    from world_models.backends.quantize import quantize_folder

    original = tmp_path_factory.getbasetemp() / "fuzz-lq40" / "model.lq40"
    if not original.exists():
        original.parent.mkdir(exist_ok=True)
        quantize_folder(model_dir, "full", original)
    fuzz_bytes(data, original.read_bytes(), original.parent / "fuzzed.lq40", read_model)


# ------------------------------------------------------------------ start banks and latents
@fuzz
@given(data=st.data())
def test_start_bank(tmp_path, data):
    from leworld_env.envs.starts import load_start_bank
    from world_models.locate import SHIPPED_DIR

    original = (SHIPPED_DIR / "pusht-tiny" / "starts.safetensors").read_bytes()
    fuzz_bytes(data, original, tmp_path / "fuzzed-starts.safetensors", load_start_bank)


@pytest.fixture(scope="module")
def latents_file(tmp_path_factory) -> Path:
    from world_models.data.latents import LatentEpisodes, save_latents

    rng = np.random.default_rng(0)
    latents = LatentEpisodes(
        z=rng.standard_normal((12, 8)).astype(np.float32),
        actions=rng.uniform(-1, 1, (12, 2)).astype(np.float32),
        episode_starts=np.array([0, 6, 12], np.int64),
        physics=np.zeros((2, 1), np.float32),
        physics_names=("damping",),
        episode_ids=np.array([0, 1], np.int64),
        info={"model": "fuzz"},
    )
    path = tmp_path_factory.mktemp("latents") / "latents.safetensors"
    save_latents(latents, path)
    return path


@fuzz
@given(data=st.data())
def test_latents(latents_file, tmp_path, data):
    from world_models.data.latents import load_latents

    fuzz_bytes(data, latents_file.read_bytes(), tmp_path / "fuzzed-latents.safetensors", load_latents)


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:
    import torch

    from world_models.training import write_checkpoint

    out = tmp_path_factory.mktemp("checkpoint")
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    payload = {"model": layer.state_dict(), "optimizer": optimizer.state_dict(), "step": 3}
    write_checkpoint(out, payload, np.random.default_rng(0).bit_generator.state)
    return out / "checkpoint.pt"


@fuzz
@given(data=st.data())
def test_checkpoint(checkpoint_file, tmp_path, data):
    from world_models.training import load_checkpoint

    fuzz_bytes(data, checkpoint_file.read_bytes(), tmp_path / "checkpoint.pt", load_checkpoint)


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from leworld_env.sim.collect import CollectConfig, collect

    config = CollectConfig(policy="weak-expert", episodes=2, image_size=64, max_steps=30, seed=3)
    return collect(config, tmp_path_factory.mktemp("fuzz-data") / "tiny", progress=False)


def read_dataset(folder: Path) -> None:
    from world_models.data.dataset import PushTClips, load_dataset_info, read_episode

    info = load_dataset_info(folder)
    PushTClips(folder, split="all")
    for index in range(info.total_episodes):
        read_episode(folder, index)


@fuzz
@given(data=st.data())
def test_dataset_metadata(tiny_dataset, tmp_path, data):
    from world_models.data.dataset import METADATA_KEY

    folder = fresh_copy(tiny_dataset, tmp_path / "fuzzed-data")
    path = folder / "data" / "metadata.json"
    if data.draw(st.booleans()):
        metadata = json.loads(path.read_text())
        section, must_fail = data.draw(edited_document(metadata[METADATA_KEY], strict=False))
        read_fields = ("image_size", "frameskip", "action_scale", "seed")  # the numbers the reader uses
        if isinstance(section, dict):
            must_fail = must_fail or any(
                key in section and not same_kind(metadata[METADATA_KEY][key], section[key]) for key in read_fields
            )
        metadata[METADATA_KEY] = section
        path.write_text(json.dumps(metadata))
    else:
        blob, must_fail = data.draw(edited_bytes(path.read_bytes()))
        path.write_bytes(blob)
    expect_clean(lambda: read_dataset(folder), path, must_fail)


@fuzz
@given(data=st.data())
def test_dataset_hdf5(tiny_dataset, tmp_path, data):
    folder = fresh_copy(tiny_dataset, tmp_path / "fuzzed-data")
    path = folder / "data" / "main_data.hdf5"
    blob, must_fail = data.draw(edited_bytes(path.read_bytes()))
    path.write_bytes(blob)
    expect_clean(lambda: read_dataset(folder), path, must_fail)


# ------------------------------------------------------------------ YAML hyperparameters
@fuzz
@given(data=st.data())
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_hyperparams_yaml(tmp_path, data, algo):
    import yaml

    from agents.train_agent import ENV_ID, HYPERPARAMS_DIR, load_hyperparams

    original = (HYPERPARAMS_DIR / f"{algo}.yml").read_text()
    path = tmp_path / f"fuzzed-{algo}.yml"
    if data.draw(st.booleans()):
        document = yaml.safe_load(original)
        entry, _ = data.draw(edited_document(document[ENV_ID], strict=False))
        must_fail = not isinstance(entry, dict)
        if isinstance(entry, dict):  # a number of the wrong kind must be refused
            must_fail = any(
                key in entry and not same_kind(value, entry[key])
                for key, value in document[ENV_ID].items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            )
        path.write_text(yaml.safe_dump({ENV_ID: entry}))
    else:
        blob, _ = data.draw(edited_bytes(original.encode()))
        must_fail = False  # a YAML file cut short can still be a valid, shorter one
        path.write_bytes(blob)
    expect_clean(lambda: load_hyperparams(algo, path), path, must_fail)


# ------------------------------------------------------------------ agent folders
@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory) -> Path:
    from stable_baselines3 import PPO

    from agents.policy_files import save_agent
    from leworld_env.sb3 import LeWorldSB3VecEnv

    env = LeWorldSB3VecEnv(num_envs=2, goal="dataset", reward="coverage", max_episode_steps=10)
    agent = PPO(
        "MultiInputPolicy", env, n_steps=8, batch_size=16, seed=0, device="cpu", policy_kwargs={"net_arch": [8]}
    )
    folder = save_agent(agent, tmp_path_factory.mktemp("agent") / "agent", {"model": "pusht-tiny"})
    env.close()
    return folder


@fuzz
@given(data=st.data())
def test_agent_json(agent_dir, tmp_path, data):
    from agents.policy_files import load_policy

    folder = fresh_copy(agent_dir, tmp_path / "fuzzed-agent")
    path = folder / "agent.json"
    if data.draw(st.booleans()):
        original = json.loads(path.read_text())
        document, must_fail = data.draw(edited_document(original, strict=False))
        required = ("format", "version", "algorithm", "policy", "policy_kwargs", "observation_space", "sha256")
        if isinstance(document, dict):  # a required field gone or of another kind cannot be right
            must_fail = any(key not in document or not same_kind(original[key], document[key]) for key in required)
        path.write_text(json.dumps(document))
    else:
        blob, must_fail = data.draw(edited_bytes(path.read_bytes()))
        path.write_bytes(blob)
    expect_clean(lambda: load_policy(folder), path, must_fail)


@fuzz
@given(data=st.data())
def test_agent_weights(agent_dir, tmp_path, data):
    """An agent's weights are guarded by agent.json's checksum: every edit must be refused."""
    from agents.policy_files import load_policy

    folder = fresh_copy(agent_dir, tmp_path / "fuzzed-agent")
    path = folder / "policy.safetensors"
    original = path.read_bytes()
    blob, _ = data.draw(edited_bytes(original))
    path.write_bytes(blob)
    expect_clean(lambda: load_policy(folder), path, must_fail=blob != original)

"""Agent folders: a stable-baselines3 PPO or SAC agent saved without pickle, and read back without it.

SB3's own ``.zip`` stores the hyperparameters with cloudpickle, and loading it unpickles them: a
crafted file runs code. LeWorld writes its agents (``leworld train-agent``'s ``OUT/model``,
``OUT/best`` and every checkpoint in ``OUT/checkpoints``) as a folder instead:

* ``agent.json``: the algorithm (``PPO`` or ``SAC``), the SB3 policy alias (``MultiInputPolicy``), the
  policy's constructor arguments (``net_arch``, ``activation_fn`` by name, ...), the observation and
  action spaces (Box and Dict only; infinite bounds as ``"inf"`` / ``"-inf"``), ``num_timesteps`` and
  free-form ``info`` (the world model, the env's arguments), and the SHA-256 of each safetensors file.
  A checkpoint adds ``training``: the optimizers' hyperparameters (``param_groups``), ``n_updates`` and
  ``episode_num``.
* ``policy.safetensors``: the policy's ``state_dict`` (for SAC: actor, critics and target critics).
* ``training.safetensors`` (checkpoints only): the optimizers' moment tensors and SAC's entropy
  coefficient.

Reading it runs no code from the file: the JSON's class names (activations, optimizers, feature
extractors) are looked up in fixed tables, the policy is built from the SB3 class the alias names,
and the tensors (checksummed, finite) are loaded with ``load_state_dict``. A folder is written next
to its destination and renamed into place, so a reader sees the old folder or the new one, never
half of one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from world_models.errors import LeWorldError
from world_models.files import (
    atomic_write_bytes,
    check_finite_tensors,
    check_sha256,
    read_json_object,
    read_safetensors,
    sha256_bytes,
)

FORMAT = "leworld-agent"
VERSION = 1
AGENT_JSON = "agent.json"
POLICY_FILE = "policy.safetensors"
TRAINING_FILE = "training.safetensors"
ALGORITHMS = ("PPO", "SAC")
MAX_SPACE_SIZE = 2**20  # numbers in one Box of an agent's spaces (PushT's observations hold a few hundred)

# The classes a policy's arguments may name (by these names, in agent.json and in the YAML files).
ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Identity")
OPTIMIZERS = ("Adam", "AdamW", "RMSprop", "SGD")
FEATURES_EXTRACTORS = ("CombinedExtractor", "FlattenExtractor")
CLASS_ARGUMENTS = {
    "activation_fn": ACTIVATIONS,
    "optimizer_class": OPTIMIZERS,
    "features_extractor_class": FEATURES_EXTRACTORS,
}
# Every policy argument an agent folder (or a YAML file's policy_kwargs) may give.
POLICY_ARGUMENTS = (
    "net_arch",
    "activation_fn",
    "ortho_init",
    "use_sde",
    "log_std_init",
    "full_std",
    "use_expln",
    "squash_output",
    "clip_mean",
    "n_critics",
    "share_features_extractor",
    "normalize_images",
    "features_extractor_class",
    "features_extractor_kwargs",
    "optimizer_class",
    "optimizer_kwargs",
)


# ------------------------------------------------------------------ classes by name
def class_by_name(argument: str, name: Any, where: str) -> type:
    """The class a policy argument names (``activation_fn: ReLU``), from the fixed tables only.

    Raises:
        LeWorldError: naming ``where`` (file and field), the value and the names allowed.
    """
    import torch
    from stable_baselines3.common import torch_layers

    allowed = CLASS_ARGUMENTS[argument]
    if not isinstance(name, str) or name.rsplit(".", 1)[-1] not in allowed:
        raise LeWorldError(f"{where}: {argument} is {name!r}; expected one of: {', '.join(allowed)}")
    name = name.rsplit(".", 1)[-1]
    if argument == "activation_fn":
        return getattr(torch.nn, name)
    if argument == "optimizer_class":
        return getattr(torch.optim, name)
    return getattr(torch_layers, name)


def _class_name(argument: str, value: Any) -> str:
    name = getattr(value, "__name__", None)
    if name not in CLASS_ARGUMENTS[argument] or class_by_name(argument, name, argument) is not value:
        raise LeWorldError(
            f"policy argument {argument} is {value!r}; "
            f"an agent folder holds only: {', '.join(CLASS_ARGUMENTS[argument])}"
        )
    return name


def json_data(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists; finite numbers only), or a LeWorldError naming ``where``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LeWorldError(f"{where}: {value} cannot be saved (not finite)")
        return value
    if isinstance(value, list | tuple):
        return [json_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: json_data(v, f"{where}.{k}") for k, v in value.items()}
    raise LeWorldError(f"{where}: {type(value).__name__} {value!r} cannot be saved in an agent folder")


def encode_policy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A policy's constructor arguments as JSON data (classes by name)."""
    encoded = {}
    for key, value in kwargs.items():
        if key not in POLICY_ARGUMENTS:
            raise LeWorldError(f"policy argument {key!r} cannot be saved in an agent folder")
        encoded[key] = (
            _class_name(key, value) if key in CLASS_ARGUMENTS and value is not None else json_data(value, key)
        )
    return encoded


def _is_layers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)


def _is_net_arch(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value) and all(k in ("pi", "vf", "qf") and _is_layers(v) for k, v in value.items())
    return _is_layers(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


_BOOL = ("true or false", lambda v: isinstance(v, bool))
# What each policy argument must be (the class arguments are checked against their tables).
_POLICY_ARGUMENT_TYPES: dict[str, tuple[str, Any]] = {
    "net_arch": ("a list of layer widths >= 1, or a mapping of pi / vf / qf to such lists", _is_net_arch),
    "ortho_init": _BOOL,
    "use_sde": _BOOL,
    "log_std_init": ("a finite number", _is_number),
    "full_std": _BOOL,
    "use_expln": _BOOL,
    "squash_output": _BOOL,
    "clip_mean": ("a finite number", _is_number),
    "n_critics": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "share_features_extractor": _BOOL,
    "normalize_images": _BOOL,
    "features_extractor_kwargs": ("a mapping", _is_mapping),
    "optimizer_kwargs": ("a mapping", _is_mapping),
}


def decode_policy_kwargs(data: Any, where: str) -> dict[str, Any]:
    """The policy's constructor arguments from JSON (or YAML) data: known names and kinds only, classes
    from the tables. ``where`` (the file and the field) starts every error.

    Raises:
        LeWorldError: naming ``where``, the argument, its value and what was expected.
    """
    if not isinstance(data, dict):
        raise LeWorldError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    kwargs = {}
    for key, value in data.items():
        if key not in POLICY_ARGUMENTS:
            raise LeWorldError(
                f"{where}: unknown policy argument {key!r}; expected one of: {', '.join(POLICY_ARGUMENTS)}"
            )
        if key in CLASS_ARGUMENTS:
            value = None if value is None else class_by_name(key, value, f"{where}.{key}")
        elif value is not None:
            expected, test = _POLICY_ARGUMENT_TYPES[key]
            if not test(value):
                raise LeWorldError(f"{where}.{key}: {value!r}; expected {expected}")
        kwargs[key] = value
    return kwargs


# ------------------------------------------------------------------ spaces
def _bound(values: np.ndarray) -> Any:
    flat = [float(v) for v in np.asarray(values, np.float64).ravel()]
    encoded = [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in flat]
    return encoded[0] if encoded and all(v == encoded[0] for v in encoded) else encoded


def encode_space(space: Any) -> dict[str, Any]:
    """A gymnasium Box or Dict of Boxes as JSON data."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: encode_space(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Box) and space.dtype in (np.float32, np.float64):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    raise LeWorldError(f"an agent folder holds Box and Dict spaces of floats, not {space}")


def _decode_bound(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    size = math.prod(shape)
    items = value if isinstance(value, list) else [value] * size
    numbers = []
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, int | float) or item in ("inf", "-inf")):
            raise LeWorldError(f"{where}: {item!r} is not a number, 'inf' or '-inf'")
        numbers.append(float(item))
    if len(numbers) != size:
        raise LeWorldError(f"{where}: {len(numbers)} numbers for shape {list(shape)}; expected 1 or {size}")
    return np.asarray(numbers, np.float64).reshape(shape)


def decode_space(data: Any, where: str, nested: bool = False) -> Any:
    """The gymnasium space :func:`encode_space` wrote: a Box, or a Dict of Boxes (SB3 nests no further)."""
    from gymnasium import spaces

    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Dict" and not nested and isinstance(data.get("spaces"), dict) and data["spaces"]:
        return spaces.Dict({key: decode_space(sub, f"{where}.{key}", True) for key, sub in data["spaces"].items()})
    if kind != "Box":
        raise LeWorldError(f"{where}: expected a Box or Dict space, got {data!r}")
    shape, dtype = data.get("shape"), data.get("dtype")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise LeWorldError(f"{where}.shape: expected a list of positive integers, got {shape!r}")
    if math.prod(shape) > MAX_SPACE_SIZE:
        raise LeWorldError(f"{where}.shape: {shape} holds over {MAX_SPACE_SIZE} numbers; expected a smaller space")
    if dtype not in ("float32", "float64"):
        raise LeWorldError(f"{where}.dtype: expected float32 or float64, got {dtype!r}")
    low = _decode_bound(data.get("low"), tuple(shape), f"{where}.low")
    high = _decode_bound(data.get("high"), tuple(shape), f"{where}.high")
    if not np.all(low <= high):
        raise LeWorldError(f"{where}: low {data.get('low')!r} above high {data.get('high')!r}; expected low <= high")
    return spaces.Box(low.astype(dtype), high.astype(dtype), tuple(shape), np.dtype(dtype))


def space_shapes(space: Any) -> Any:
    """A space's shape (a Box) or its shapes by key (a Dict), to compare two spaces in a message."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {key: space_shapes(sub) for key, sub in space.spaces.items()}
    return list(space.shape)


# ------------------------------------------------------------------ writing
def algorithm_name(model: Any) -> str:
    """``PPO`` or ``SAC`` for an SB3 model (or a LeWorldError)."""
    from stable_baselines3 import PPO, SAC

    for algorithm in (PPO, SAC):
        if isinstance(model, algorithm):
            return algorithm.__name__
    raise LeWorldError(f"an agent folder holds PPO or SAC agents, not {type(model).__name__}")


def _policy_alias(model: Any) -> str:
    for alias, cls in model.policy_aliases.items():
        if type(model.policy) is cls:
            return alias
    raise LeWorldError(f"policy {type(model.policy).__name__} is not one of SB3's {', '.join(model.policy_aliases)}")


def _policy_kwargs(model: Any) -> dict[str, Any]:
    """What the policy was built with: the algorithm's policy_kwargs and, for PPO, use_sde."""
    kwargs = dict(model.policy_kwargs)
    kwargs.setdefault("use_sde", bool(model.use_sde))
    return kwargs


def _optimizer_state(name: str, optimizer: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's state_dict split into tensors (into ``tensors``) and JSON data (returned)."""
    import torch

    state = optimizer.state_dict()
    values: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{name}/state/{index}/{key}"] = value
            else:
                values.setdefault(str(index), {})[key] = json_data(value, f"{name}.state.{index}.{key}")
    return {"param_groups": json_data(state["param_groups"], f"{name}.param_groups"), "state_values": values}


def _training_state(model: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run needs beyond the policy: optimizers, SAC's entropy coefficient, counters."""
    state_dicts, variables = model._get_torch_save_params()
    optimizers = {
        name: _optimizer_state(name, _attribute(model, name), tensors) for name in state_dicts if name != "policy"
    }
    for name in variables:
        tensors[f"variables/{name}"] = _attribute(model, name)
    return {
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(getattr(model, "_episode_num", 0)),
        "optimizers": optimizers,
        "variables": list(variables),
    }


def _attribute(model: Any, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), model)


def agent_config(model: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``agent.json`` of an SB3 model (without its training state)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": algorithm_name(model),
        "policy": _policy_alias(model),
        "policy_kwargs": encode_policy_kwargs(_policy_kwargs(model)),
        "observation_space": encode_space(model.observation_space),
        "action_space": encode_space(model.action_space),
        "num_timesteps": int(model.num_timesteps),
        "info": json_data(info or {}, "info"),
    }


def save_agent(model: Any, folder: Path, info: dict[str, Any] | None = None, training: bool = False) -> Path:
    """Write an SB3 PPO or SAC model as an agent folder (no pickle); ``training`` adds what
    :func:`restore_training` needs (optimizers, SAC's entropy coefficient, counters). Returns ``folder``.

    The folder is written beside ``folder`` and renamed into place (an existing agent folder there
    is replaced). SAC's replay buffer is never saved.
    """
    folder = Path(folder)
    config = agent_config(model, info)
    extra: dict[str, Any] = {}
    if training:
        config["training"] = _training_state(model, extra)
    blobs = {POLICY_FILE: _tensor_bytes(model.policy.state_dict())}
    if training:
        blobs[TRAINING_FILE] = _tensor_bytes(extra)
    config["sha256"] = {name: sha256_bytes(blob) for name, blob in blobs.items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a folder gets what a plain mkdir gives
        for name, blob in blobs.items():
            atomic_write_bytes(staging / name, blob)
        atomic_write_bytes(staging / AGENT_JSON, json.dumps(config, indent=2).encode())
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _tensor_bytes(tensors: dict[str, Any]) -> bytes:
    """Tensors as safetensors bytes (copies on the cpu: shared weights are written once per name)."""
    from safetensors.torch import save

    return save({k: v.detach().clone().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})


def _swap_in(staging: Path, folder: Path) -> None:
    """Rename the written ``staging`` folder to ``folder``, replacing an agent folder there."""
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or (not (folder / AGENT_JSON).is_file() and any(folder.iterdir())):
            raise LeWorldError(f"{folder}: exists and is not an agent folder; refusing to replace it")
        aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
        os.replace(folder, aside / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, folder)
    with contextlib.suppress(OSError):
        fd = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ reading
def agent_folder(path: Path) -> Path | None:
    """The agent folder ``path`` names (the folder, its ``agent.json`` or its ``policy.safetensors``), or None."""
    path = Path(path)
    if path.is_dir() and (path / AGENT_JSON).is_file():
        return path
    if path.name in (AGENT_JSON, POLICY_FILE) and path.is_file() and (path.parent / AGENT_JSON).is_file():
        return path.parent
    return None


def _field(data: dict[str, Any], key: str, expected: str, test: Any, source: Path) -> Any:
    value = data.get(key)
    if not test(value):
        raise LeWorldError(f"{source}: field {key!r} is {value!r}; expected {expected}")
    return value


def read_agent_config(folder: Path) -> dict[str, Any]:
    """``folder/agent.json``, checked: every field named in an error with its value and what was expected."""
    source = Path(folder) / AGENT_JSON
    data = read_json_object(source, what="agent file")
    _field(data, "format", repr(FORMAT), lambda v: v == FORMAT, source)
    _field(
        data,
        "version",
        f"{VERSION} (this LeWorld reads version {VERSION})",
        lambda v: type(v) is int and v == VERSION,
        source,
    )
    _field(data, "algorithm", f"one of {', '.join(ALGORITHMS)}", lambda v: v in ALGORITHMS, source)
    _field(data, "policy", "an SB3 policy alias (MultiInputPolicy)", lambda v: isinstance(v, str), source)
    _field(data, "policy_kwargs", "a mapping", lambda v: isinstance(v, dict), source)
    _field(data, "observation_space", "a space", lambda v: isinstance(v, dict), source)
    _field(data, "action_space", "a space", lambda v: isinstance(v, dict), source)
    count = "an integer >= 0"
    _field(data, "num_timesteps", count, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, source)
    _field(data, "info", "a mapping", lambda v: v is None or isinstance(v, dict), source)
    return data


def _algorithm_class(name: str) -> Any:
    from stable_baselines3 import PPO, SAC

    return {"PPO": PPO, "SAC": SAC}[name]


def _constant(value: float) -> Any:
    return lambda _progress: value


def _weights_at_least(kwargs: dict[str, Any], observation_space: Any) -> int:
    """A lower bound of the numbers in the policy ``kwargs`` build: the layers ``net_arch`` names (and the first
    one's inputs), once. To refuse a config far larger than its weights file before anything is allocated."""
    from gymnasium import spaces

    net_arch = kwargs.get("net_arch") or []
    networks = list(net_arch.values()) if isinstance(net_arch, dict) else [net_arch]
    boxes = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    inputs = sum(math.prod(box.shape) for box in boxes)
    return sum(
        (inputs + 1) * layers[0] + sum((a + 1) * b for a, b in itertools.pairwise(layers))
        for layers in networks
        if layers
    )


def build_policy(config: dict[str, Any], source: Path, weights: int | None = None) -> Any:
    """The SB3 policy ``config`` describes, with fresh weights (cpu). ``weights``: the numbers in the file
    it will be loaded from; a config that needs more is refused before it is built."""
    algorithm = _algorithm_class(config["algorithm"])
    if config["policy"] not in algorithm.policy_aliases:
        raise LeWorldError(
            f"{source}: field 'policy' is {config['policy']!r}; expected one of: {', '.join(algorithm.policy_aliases)}"
        )
    policy_class = algorithm.policy_aliases[config["policy"]]
    kwargs = decode_policy_kwargs(config["policy_kwargs"], f"{source}: policy_kwargs")
    observation_space = decode_space(config["observation_space"], f"{source}: observation_space")
    action_space = decode_space(config["action_space"], f"{source}: action_space")
    if config["action_space"].get("type") != "Box":
        raise LeWorldError(f"{source}: field 'action_space' is a {config['action_space'].get('type')}; expected a Box")
    needed = _weights_at_least(kwargs, observation_space)
    if weights is not None and needed > weights:
        raise LeWorldError(
            f"{source}: policy_kwargs.net_arch needs at least {needed} weights, {POLICY_FILE} holds {weights}; "
            "the two files are not from the same save"
        )
    try:
        return policy_class(observation_space, action_space, _constant(0.0), **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, NotImplementedError, RuntimeError, IndexError) as err:
        raise LeWorldError(
            f"{source}: {config['algorithm']} {config['policy']} cannot be built from it ({err})"
        ) from None


def read_tensors(folder: Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``folder/name``'s tensors (torch), once its bytes match ``agent.json``'s checksum and every value is finite.

    Raises:
        LeWorldError: naming the file: missing, changed since it was written, unreadable, or not finite.
    """
    path = Path(folder) / name
    expected = (config.get("sha256") or {}).get(name) if isinstance(config.get("sha256"), dict) else None
    if not isinstance(expected, str):
        raise LeWorldError(f"{folder / AGENT_JSON}: field 'sha256' has no checksum of {name}; expected a hex string")
    check_sha256(path, expected, str(folder / AGENT_JSON))
    tensors = read_safetensors(path, "pt")
    check_finite_tensors(tensors, str(path))
    return tensors


def _load_module(module: Any, tensors: dict[str, Any], path: Path) -> None:
    from world_models.lewm.folder import load_state_checked

    load_state_checked(module, tensors, path)


class SavedAgent:
    """A policy read from an agent folder, with SB3's ``predict``; it acts, it does not train.

    Attributes:
        policy: the SB3 policy (eval mode, cpu).
        algorithm: ``PPO`` or ``SAC``.
        num_timesteps: the environment steps it was trained for.
        info: ``agent.json``'s ``info`` (the world model, the env's arguments, ...).
        folder: where it was read from.
    """

    def __init__(self, policy: Any, config: dict[str, Any], folder: Path) -> None:
        self.policy = policy
        self.algorithm: str = config["algorithm"]
        self.num_timesteps: int = config["num_timesteps"]
        self.info: dict[str, Any] = dict(config.get("info") or {})
        self.folder = folder
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict``: the policy's action(s) for an observation (single or batched)."""
        return self.policy.predict(observation, state, episode_start, deterministic)

    def __repr__(self) -> str:
        return f"SavedAgent({self.algorithm}, {self.num_timesteps} steps, {self.folder})"


def load_policy(path: Path) -> SavedAgent:
    """The agent in an agent folder (or its ``agent.json`` / ``policy.safetensors``), ready to act. No pickle.

    Raises:
        LeWorldError: naming the file and what is wrong with it.
    """
    folder = agent_folder(path)
    if folder is None:
        raise LeWorldError(f"{path}: not an agent folder (expected a folder with {AGENT_JSON} and {POLICY_FILE})")
    config = read_agent_config(folder)
    tensors = read_tensors(folder, POLICY_FILE, config)
    policy = build_policy(config, folder / AGENT_JSON, sum(t.numel() for t in tensors.values()))
    _load_module(policy, tensors, folder / POLICY_FILE)
    policy.set_training_mode(False)
    return SavedAgent(policy, config, folder)


def _optimizer_from(name: str, data: Any, tensors: dict[str, Any], source: Path) -> dict[str, Any]:
    """An optimizer state_dict from its JSON part and its tensors."""
    where = f"{source}: field 'training.optimizers.{name}'"
    if not (isinstance(data, dict) and isinstance(data.get("param_groups"), list)):
        raise LeWorldError(f"{where}: expected a mapping with param_groups (a list) and state_values")
    values = data.get("state_values") or {}
    if not _is_mapping(values) or not all(_is_mapping(v) for v in values.values()):
        raise LeWorldError(f"{where}.state_values: expected a mapping of parameter index to a mapping")
    if not all(_is_mapping(group) for group in data["param_groups"]):
        raise LeWorldError(f"{where}.param_groups: expected a list of mappings, got {data['param_groups']!r}")
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in data["param_groups"]
    ]
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/state/"
    try:
        for key, tensor in tensors.items():
            if key.startswith(prefix):
                index, entry = key[len(prefix) :].split("/", 1)
                state.setdefault(int(index), {})[entry] = tensor
        for index, entries in values.items():
            state.setdefault(int(index), {}).update(entries)
    except ValueError as err:
        raise LeWorldError(f"{where}: a parameter index that is not an integer ({err})") from None
    return {"state": state, "param_groups": groups}


def restore_training(model: Any, folder: Path) -> None:
    """Load a checkpoint folder into a freshly built SB3 model of the same configuration: the policy's
    weights, the optimizers' state, SAC's entropy coefficient, ``num_timesteps``, the update and
    episode counters. Not restored: SAC's replay buffer, random generators, the envs' episodes.

    Raises:
        LeWorldError: the folder is not a checkpoint of this model (other algorithm, other network).
    """
    import torch

    folder = Path(folder)
    config = read_agent_config(folder)
    source = folder / AGENT_JSON
    if config["algorithm"] != algorithm_name(model):
        raise LeWorldError(f"{source}: a {config['algorithm']} checkpoint; this run trains {algorithm_name(model)}")
    training = config.get("training")
    if not isinstance(training, dict) or not isinstance(training.get("optimizers"), dict):
        raise LeWorldError(f"{source}: field 'training' is missing; a final model is not a checkpoint to resume")
    counters = {key: training.get(key, 0) for key in ("n_updates", "episode_num")}
    for key, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LeWorldError(f"{source}: field 'training.{key}' is {value!r}; expected an integer >= 0")
    variables, known = training.get("variables") or [], model._get_torch_save_params()[1]
    if not (isinstance(variables, list) and all(isinstance(v, str) and v in known for v in variables)):
        raise LeWorldError(f"{source}: field 'training.variables' is {variables!r}; expected some of {known}")
    tensors = read_tensors(folder, TRAINING_FILE, config)
    params = {"policy": read_tensors(folder, POLICY_FILE, config)}
    for name, data in training["optimizers"].items():
        params[name] = _optimizer_from(name, data, tensors, source)
    try:
        _load_module(model.policy, params["policy"], folder / POLICY_FILE)
        model.set_parameters(params, exact_match=True, device="cpu")
        with torch.no_grad():
            for name in variables:
                _attribute(model, name).copy_(tensors[f"variables/{name}"])
    except (ValueError, KeyError, IndexError, RuntimeError, AttributeError, TypeError) as err:
        raise LeWorldError(f"{folder}: does not fit this run's {algorithm_name(model)} ({err})") from None
    model.num_timesteps = config["num_timesteps"]
    model._n_updates = counters["n_updates"]
    model._episode_num = counters["episode_num"]

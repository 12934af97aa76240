"""Several predictors over one encoder: how much the dream can be trusted where it is (MOPO / MOReL).

:class:`PredictorEnsemble` is a :class:`~world_models.interface.WorldModel` whose encoder,
probe and predictions are its first member's (the dream is not changed by having an ensemble);
the other members are predictor heads trained on the same encoder's latents
(:mod:`world_models.lewm.heads`). Their **disagreement** at a step is the root-mean-square,
over latent dimensions, of the members' standard deviation around their mean:
``sqrt(mean_d(var_k(z_next[k, :, d])))``, in latent units (the latents are roughly unit
scale under SIGReg). Identical members disagree by 0.

The dream env reads it (``disagreement_penalty``, ``disagreement_limit`` in
:class:`~leworld_env.envs.settings.TaskSettings`): the penalty is subtracted from the reward,
the limit ends the episode (truncated) where the heads part ways.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from world_models.errors import LeWorldError
from world_models.interface import WorldModel

SHARED_FIELDS = ("latent_dim", "action_dim", "history", "image_size", "frameskip")


def disagreement(predictions: np.ndarray) -> np.ndarray:
    """Members' predictions (K, B, D) -> disagreement (B,): RMS over D of the std over K."""
    return np.sqrt(np.mean(np.var(np.asarray(predictions, np.float64), axis=0), axis=-1)).astype(np.float32)


class PredictorEnsemble(WorldModel):
    """The first member's model, plus the other members' predictors for :meth:`predict_with_disagreement`.

    Args:
        members: two or more models on the same encoder (same latents for the same frames), first the
            one the dream runs.

    Raises:
        LeWorldError: fewer than two members, or members whose sizes differ (naming the field).
    """

    def __init__(self, members: Sequence[WorldModel]) -> None:
        members = list(members)
        if len(members) < 2:
            raise LeWorldError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            for name in SHARED_FIELDS:
                if getattr(member.config, name) != getattr(first.config, name):
                    raise LeWorldError(
                        f"ensemble member {i} ({getattr(member, 'path', member)}): {name} is "
                        f"{getattr(member.config, name)}, the first member's is {getattr(first.config, name)}"
                    )
        self.members = members
        self.config = first.config
        self.backend = first.backend
        self.has_probe = first.has_probe
        self.path = getattr(first, "path", None)

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.members[0]._encode(pixels)

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.members[0]._probe_targets(z)

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        return self.members[0]._predict(z_hist, a_hist)

    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        return self.members[0]._rollout(z_hist, a_hist, a_future)

    def predict_with_disagreement(self, z_hist: object, a_hist: object) -> tuple[np.ndarray, np.ndarray]:
        """The first member's next latent (B, D) and the members' disagreement about it (B,)."""
        z, a = self._history(z_hist, a_hist)
        predictions = np.stack([member._predict(z, a) for member in self.members])
        return predictions[0], disagreement(predictions)

    def __repr__(self) -> str:
        return f"PredictorEnsemble({len(self.members)} members, first {self.members[0]!r})"

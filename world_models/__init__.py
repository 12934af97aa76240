"""World models of PushT: data, models, training, quantization, backends.

Only the data layer exists so far; models arrive with the world-model issue.
"""

from world_models.data import ClipBatch, PushTClips, load_dataset_info
from world_models.errors import DatasetError, LeWorldError

__all__ = ["ClipBatch", "DatasetError", "LeWorldError", "PushTClips", "load_dataset_info"]

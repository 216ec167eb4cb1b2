"""cpcnn: Cell Painting CNN-1 single-cell embeddings, profiles and similarity search."""

from cpcnn._types import CHANNELS, CROP_SIZE, FEATURE_LAYER
from cpcnn.errors import CpcnnError, InputError, NotFoundError

__version__ = "0.1.0"

__all__ = ["CHANNELS", "CROP_SIZE", "FEATURE_LAYER", "CpcnnError", "InputError", "NotFoundError", "__version__"]

"""Former name of :mod:`blurry_edges.features` (network outputs ↔ tokens); kept as an import path."""
from .features import (BF16_CHOICES, autocast_context, local_features, native_bf16, pair_tokens,  # noqa: F401
                       resolve_bf16, uses_channels_last)

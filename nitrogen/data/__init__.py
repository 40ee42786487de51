"""Fine-tuning data: the gameplay schema, the safe image reader, windowed torch datasets and a throughput probe."""

from nitrogen.data.dataset import (
    GameplayDataset,
    WindowConfig,
    collate,
    load_gameplay,
    load_gameplays,
    split_by_episode,
)
from nitrogen.data.images import IMAGE_FORMATS, MAX_IMAGE_PIXELS, ImageReader
from nitrogen.data.schema import (
    BUTTON_COLUMNS,
    MAPPING_PRESETS,
    ActionMapper,
    CorruptRowError,
    MappingConfig,
    load_mapping,
    row_to_action,
    table_to_actions,
)
from nitrogen.data.throughput import measure_throughput

__all__ = [
    "BUTTON_COLUMNS",
    "IMAGE_FORMATS",
    "MAPPING_PRESETS",
    "MAX_IMAGE_PIXELS",
    "ActionMapper",
    "CorruptRowError",
    "GameplayDataset",
    "ImageReader",
    "MappingConfig",
    "WindowConfig",
    "collate",
    "load_gameplay",
    "load_gameplays",
    "load_mapping",
    "measure_throughput",
    "row_to_action",
    "split_by_episode",
    "table_to_actions",
]

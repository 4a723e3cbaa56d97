"""Training data: annotation files (`coco`, `keypoints`), per-sample augmentation (`sample`, `transforms`),
the batch level (`batch`: collate, BatchSyncRandomResize) and a recipe's `TrainData` (`dataset`)."""

from .batch import collate, draw_batch_size, resize_batch, to_device
from .coco import CocoPoseDataset, UnreadableImageError, mpii_to_coco
from .dataset import CombinedDataset, TrainData, TrainDataset, build_train_data
from .keypoints import (
    BODY7_TO_COCO,
    BODY7_TO_CROWDPOSE,
    KeypointConverter,
    flip_indices_from_names,
    keypoint_info_from_category,
)
from .sample import PoseSample
from .transforms import Stage1Pipeline, Stage2Pipeline

__all__ = [
    "BODY7_TO_COCO", "BODY7_TO_CROWDPOSE", "CocoPoseDataset", "CombinedDataset", "KeypointConverter",
    "PoseSample", "Stage1Pipeline", "Stage2Pipeline", "TrainData", "TrainDataset", "UnreadableImageError",
    "build_train_data", "collate", "draw_batch_size", "flip_indices_from_names",
    "keypoint_info_from_category", "mpii_to_coco", "resize_batch", "to_device",
]

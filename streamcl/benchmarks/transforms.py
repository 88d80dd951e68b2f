"""Default image transforms for the stream benchmarks: resize to a square + ImageNet normalisation.

No augmentation by default: stream protocols see each frame once, in order,
and the paper's pipelines only resize and normalise. Both the Avalanche
scenarios and the continuum bridge use these, so the two see identical tensors.
"""

from __future__ import annotations

from typing import Callable, List

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_list(image_size: int = 224, *, hflip: bool = False) -> List[Callable]:
    """The default pipeline as a list (continuum wants a list): resize to ``image_size``², [flip], tensor, normalise."""
    ops: List[Callable] = [T.Resize((image_size, image_size), antialias=True)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return ops


def default_train_transform(image_size: int = 224, *, hflip: bool = False) -> Callable:
    """Training transform: resize + normalise (optional random horizontal flip)."""
    return T.Compose(transform_list(image_size, hflip=hflip))


def default_eval_transform(image_size: int = 224) -> Callable:
    """Evaluation transform: resize + normalise."""
    return T.Compose(transform_list(image_size))

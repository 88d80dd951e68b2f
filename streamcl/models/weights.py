"""Loading model weights from local files (``torch.load(weights_only=True)``) or torchvision's hub.

Errors are :class:`~streamcl.errors.CheckpointError` / :class:`~streamcl.errors.StreamclError`
messages that name the file and say how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from streamcl.errors import CheckpointError, StreamclError

PathLike = Union[str, Path]

__all__ = ["read_state_dict", "load_matching", "torchvision_pretrained", "is_splitnet_state"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """Read a state dict from ``path`` safely (``weights_only=True``, CPU).

    Accepts a bare ``{name: tensor}`` dict or one wrapped under ``state_dict`` /
    ``model_state_dict`` / ``model`` / ``net`` (e.g. a CRUMB pretrained file); strips
    a ``module.`` prefix left by ``DataParallel``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(
            f"{path}: weights file not found; give the path of a local state_dict file "
            "(torch.save(model.state_dict(), path)) or set weights: null for random initialisation"
        )
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled objects refused by weights_only, ...
        raise CheckpointError(
            f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "expected a file written with torch.save(model.state_dict(), path)"
        ) from None
    for _ in range(2):
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise CheckpointError(
            f"{path}: not a state_dict (expected a mapping from parameter names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    out = {}
    for k, v in obj.items():
        k = str(k)
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def is_splitnet_state(state: Mapping[str, Tensor]) -> bool:
    """True when the keys are those of a SplitNet (``trunk.*`` / ``head.*``)."""
    return all(k.startswith(("trunk.", "head.")) for k in state)


def load_matching(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    path: PathLike,
    optional_prefixes: Sequence[str] = (),
) -> Tuple[str, ...]:
    """Load ``state`` into ``module`` strictly, except for keys under ``optional_prefixes``.

    Keys under an optional prefix (the final classifier, resized to the number
    of classes) are skipped when absent or of a different shape. Any other
    missing, unexpected or mis-shaped key raises a :class:`CheckpointError`
    naming ``path``. Returns the skipped keys.
    """
    prefixes = tuple(optional_prefixes)
    own = module.state_dict()
    skipped = []
    filtered = {}
    bad_shape = []
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            if prefixes and k.startswith(prefixes):
                skipped.append(k)
                continue
            bad_shape.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
            continue
        filtered[k] = v
    missing = [k for k in own if k not in filtered and not (prefixes and k.startswith(prefixes))]
    unexpected = [k for k in filtered if k not in own]
    if bad_shape or missing or unexpected:
        parts = []
        if bad_shape:
            parts.append(f"{len(bad_shape)} tensors with another shape (e.g. {bad_shape[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{path}: the weights do not match the model ({'; '.join(parts)}); "
            "use a state_dict of the same architecture (the full torchvision model or the SplitNet), "
            "or set weights: null"
        )
    module.load_state_dict(filtered, strict=False)
    return tuple(skipped)


def torchvision_pretrained(builder: Callable[..., nn.Module], weights_enum: Any, arch: str) -> nn.Module:
    """``builder(weights=weights_enum)``; an offline machine gets a clear :class:`StreamclError`."""
    try:
        return builder(weights=weights_enum)
    except Exception as e:  # URLError, HTTPError, socket errors, hash mismatches ...
        raise StreamclError(
            f"weights: imagenet: could not fetch torchvision's pretrained {arch} weights "
            f"({type(e).__name__}: {e}); this machine looks offline. Download them on a connected "
            f"machine (torchvision.models.{arch}(weights='IMAGENET1K_V1') then "
            "torch.save(model.state_dict(), 'file.pth')) and pass weights: /path/to/file.pth"
        ) from None


def resolve_weights(weights: Optional[str]) -> Optional[str]:
    """Normalise the ``weights`` argument: None, ``"imagenet"`` or a path string."""
    if weights is None:
        return None
    w = str(weights).strip()
    if w.lower() in ("", "none", "null", "random"):
        return None
    if w.lower() in ("imagenet", "imagenet1k", "imagenet1k_v1", "default", "pretrained"):
        return "imagenet"
    return w

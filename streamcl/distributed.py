"""Multi-process data parallel for one run: ``torchrun --nproc_per_node N -m streamcl run FILE.yaml``.

Built on Avalanche's own distributed support (:data:`avalanche.distributed.DistributedHelper`):
it initialises the process group (gloo on CPU, NCCL on CUDA), picks each rank's device, and
Avalanche's data loaders then shard every training experience with a ``DistributedSampler``.
Evaluation is not sharded (Avalanche 0.6 builds plain eval loaders): every rank evaluates the
whole test stream with the same weights, so every rank computes the same metrics.

What every rank shares (identical on all ranks at every experience end)
----------------------------------------------------------------------
* the weights: each optimiser step uses the gradients averaged over the ranks
  (:class:`GradientSync`) and BatchNorm statistics are averaged after every epoch;
* the decisions: which unit runs, skip / resume, the checkpoint it resumes from (rank 0
  decides and broadcasts: :func:`on_main`, :func:`broadcast_decision`);
* the replay memory: CRUMB / REMIND code buffers receive the codes of *all* ranks' items,
  gathered in the global stream order (:func:`gather_in_stream_order`), their codec is fitted
  on the gathered first batch (and broadcast from rank 0), replay draws are identical on every
  rank and each rank trains on its share; Avalanche's raw ``ReplayPlugin`` updates its
  buffer from the whole experience with random generators aligned across ranks. At every
  experience end the buffers' digests are compared, and rank 0's state is broadcast if they
  ever differ (GPU k-means may not be bit-reproducible).

Only rank 0 writes files (checkpoint, ``metrics.csv``, TensorBoard, ``summary.json``, the
cell's ``config.yaml``, the pretrain file, the experiment summary); the others hold no logger.

Batch size and learning rate
----------------------------
``strategy.train_mb_size`` stays the *global* mini-batch: each of N ranks takes
``train_mb_size / N`` items per step (it must divide), gradients are averaged, so one step sees
the same number of items and the same mean loss as a 1-process run, with as many steps per
epoch. No learning-rate change is needed and results match a 1-process run within run-to-run
noise. (The alternative, ``train_mb_size`` per rank, multiplies the batch by N and divides the
steps by N: the linear-scaling rule ``lr x N`` with warm-up would then be needed, and streaming
methods that take few steps per experience lose accuracy.) To use bigger batches on more GPUs,
raise ``train_mb_size`` (and, by the linear-scaling rule, the learning rate) explicitly.

Exceptions to exact equivalence: REMIND ``mode: per_sample`` takes one step per example *per
rank* (N examples per step: its streaming SGD is sequential by definition), BatchNorm layers after
the cut see per-rank batches (not synchronised within a step), and the ``DistributedSampler``
pads the last batch with up to N-1 repeated items.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar

import torch
from torch import Tensor, nn

from streamcl.errors import CheckpointError, ConfigError, DatasetError, StreamclError

__all__ = [
    "DUMP_ENV",
    "init_from_env",
    "launched_by_torchrun",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "barrier",
    "broadcast_decision",
    "on_main",
    "main_process_first",
    "per_rank_batch_size",
    "gather_in_stream_order",
    "shard",
    "sync_gradients",
    "GradientSync",
    "prepare_strategy",
    "DistributedRun",
    "state_digest",
]

T = TypeVar("T")

# Debug switch: every rank appends one line per trained experience (digests of its weights and of each
# latent-replay plugin's buffer and codec) to $STREAMCL_DUMP_BUFFER/rank<k>.txt. The test compares them.
DUMP_ENV = "STREAMCL_DUMP_BUFFER"

_ERRORS = {cls.__name__: cls for cls in (StreamclError, ConfigError, DatasetError, CheckpointError)}


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _helper():
    from avalanche.distributed import DistributedHelper

    return DistributedHelper


def init_from_env(use_cuda: Optional[bool] = None) -> bool:
    """Join the torchrun process group (once per process); returns True when running distributed.

    A no-op outside torchrun. ``use_cuda``: NCCL and each rank's own GPU when True (default: when
    CUDA is available), gloo on the CPU otherwise.
    """
    if not launched_by_torchrun():
        return False
    if torch.distributed.is_initialized():
        return True
    helper = _helper()
    cuda = torch.cuda.is_available() if use_cuda is None else bool(use_cuda and torch.cuda.is_available())
    if cuda and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    use_local_rank_gpu(helper, int(os.environ.get("LOCAL_RANK", "0")))
    helper.init_distributed(random_seed=0, backend="nccl" if cuda else "gloo", use_cuda=cuda)
    atexit.register(_shutdown)
    return True


def use_local_rank_gpu(helper: Any, local_rank: int) -> None:
    """Make Avalanche's helper put this process on GPU ``local_rank``, not on GPU <global rank>.

    Avalanche 0.6's ``DistributedHelper.make_device`` / ``get_device_id`` take the global rank
    as the GPU index: right on one node, but on a second node rank 8 names a GPU that does not
    exist there, and ``init_distributed`` (which sets that device) and every collective (which
    moves tensors to it) fail. The two methods are replaced on the helper instance; on one node
    (local rank = rank) nothing changes.
    """

    def get_device_id() -> int:
        return local_rank if helper.use_cuda else -1

    def make_device(set_cuda_device: bool = False) -> torch.device:
        if not helper.use_cuda:
            return torch.device("cpu")
        dev = torch.device("cuda", local_rank)
        if set_cuda_device:
            torch.cuda.set_device(dev)
        return dev

    helper.get_device_id = get_device_id
    helper.make_device = make_device


def _shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process): the only one that writes files."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device under torchrun: its GPU (``LOCAL_RANK``) with NCCL, else the CPU."""
    if torch.cuda.is_available() and is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank())))
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def broadcast_decision(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; a no-op in one process)."""
    if not is_distributed():
        return obj
    return _helper().broadcast_object(obj)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An exception raised there is raised on every rank (a StreamclError with the same class and
    message, so every process exits 2 with the same line), so no rank waits for the others forever.
    """
    if not is_distributed():
        return fn()
    outcome: Any = None
    if is_main_process():
        try:
            outcome = ("ok", fn())
        except StreamclError as e:
            outcome = ("error", type(e).__name__, str(e), getattr(e, "exit_code", 2))
            broadcast_decision(outcome)
            raise
        except BaseException as e:
            outcome = ("crash", type(e).__name__, str(e), 1)
            broadcast_decision(outcome)
            raise
    outcome = broadcast_decision(outcome)
    if outcome[0] == "ok":
        return outcome[1]
    cls = _ERRORS.get(outcome[1], StreamclError) if outcome[0] == "error" else None
    if cls is not None:
        err = cls.__new__(cls)
        Exception.__init__(err, outcome[2])
        err.file = err.key = None  # ConfigError's attributes (the message already names them)
        err.detail = outcome[2]
        raise err
    raise RuntimeError(f"rank 0 failed ({outcome[1]}: {outcome[2]})")


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating or indexing a dataset), then the other ranks."""
    if not is_distributed():
        yield
        return
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def per_rank_batch_size(global_mb_size: int, where: str = "strategy.train_mb_size") -> int:
    """Items per rank and step: the configured (global) mini-batch split evenly across the ranks."""
    n = world_size()
    if global_mb_size % n:
        up = -(-global_mb_size // n) * n
        raise ConfigError(f"{global_mb_size} is the global mini-batch, split across {n} torchrun processes: "
                          f"it must be a multiple of {n} (e.g. -o {where}={up})", key=where)
    return global_mb_size // n


def gather_in_stream_order(t: Tensor) -> Tensor:
    """The items of every rank's ``t`` (first dimension), in the order of the global sampled stream.

    Avalanche's ``DistributedSampler`` deals item ``i`` of the (shuffled or not) stream to rank
    ``i % N``; interleaving the ranks' equal-length batches restores the stream order, so
    order-dependent rules (CRUMB's every-k-th item per class) see the items as one process
    would. Unequal lengths (never with the padded sampler) fall back to rank order.
    """
    if not is_distributed():
        return t
    dtype = t.dtype
    if not t.is_floating_point() and dtype not in (torch.int32, torch.int64):
        t = t.to(torch.int64)  # gloo reduces no bool / int16 tensors: widen, then narrow back
    parts = [p.to(dtype) for p in _helper().gather_all(t.contiguous())]
    if all(len(p) == len(parts[0]) for p in parts):
        return torch.stack(parts, dim=1).reshape(-1, *t.shape[1:])
    return torch.cat(parts)


def shard(feats: Tensor, *others: Any) -> tuple:
    """This rank's share (items ``rank::N``) of replay items drawn identically on every rank.

    ``others``: tensors of the same length (labels) are sliced alike, anything else is kept.
    Fewer items than ranks: every rank keeps them all (no rank trains on an empty batch).
    """
    n = world_size()
    if n == 1 or len(feats) < n:
        return (feats, *others)
    r = rank()
    cut = [o[r::n] if isinstance(o, Tensor) and o.dim() > 0 and len(o) == len(feats) else o for o in others]
    return (feats[r::n], *cut)


# ---------------------------------------------------------------------------------------------- gradients
class GradientSync:
    """Averages gradients over the ranks right before they are used: at every optimiser step.

    Why not ``DistributedHelper.wrap_model`` (DDP): DDP only reduces gradients of a backward
    that follows a forward *through the wrapper*, while latent replay steps run the layers after
    the cut directly (CRUMB's separate replay step, REMIND's per-example steps), and the wrapper
    renames every state-dict key (``module.``), so checkpoints would not resume across world
    sizes. Instead every optimiser step (any optimiser, through torch's global step pre-hook)
    first all-reduces the gradients accumulated since the last reduction: one bucketed
    all-reduce per step, as DDP does, on whatever path produced them. Plugins that read or
    change gradients before the step (gradient clamping) call :func:`sync_gradients` first.
    """

    def __init__(self, model: nn.Module):
        self._dirty: set = set()
        self._hooked: Dict[int, Any] = {}
        from torch.optim.optimizer import (
            register_optimizer_step_pre_hook,  # torch.optim drops its submodule names
        )

        for p in model.parameters():
            self._watch(p)
        self._step_hook = register_optimizer_step_pre_hook(self._before_step)

    def _watch(self, p: Tensor) -> bool:
        """Track when ``p`` gets a new gradient; False when it was not watched yet."""
        if id(p) in self._hooked:
            return True
        if not p.requires_grad and p.grad is None:
            return True  # frozen: nothing to reduce (watched once it trains, if ever)
        self._hooked[id(p)] = p.register_post_accumulate_grad_hook(lambda q: self._dirty.add(id(q)))
        return False

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.sync(p for g in optimizer.param_groups for p in g["params"])

    def sync(self, params: Iterable[Tensor]) -> None:
        """All-reduce (mean) the fresh gradients of ``params``; gradients already averaged are left alone."""
        todo: List[Tensor] = []
        seen = set()
        for p in params:
            if id(p) in seen or p.grad is None:
                continue
            seen.add(id(p))
            fresh = not self._watch(p) or id(p) in self._dirty  # a parameter met only now: its grad is fresh
            if fresh:
                todo.append(p)
                self._dirty.discard(id(p))
        if not todo:
            return
        n = world_size()
        by_kind: Dict[Any, List[Tensor]] = {}
        for p in todo:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in by_kind.values():  # one flat all-reduce per dtype/device, as DDP's buckets
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            flat.div_(n)
            offset = 0
            for p in group:
                k = p.grad.numel()
                p.grad.copy_(flat[offset: offset + k].view_as(p.grad))
                offset += k

    def close(self) -> None:
        self._step_hook.remove()
        for h in self._hooked.values():
            h.remove()
        self._hooked.clear()


_ACTIVE: Optional[GradientSync] = None


def sync_gradients(params: Iterable[Tensor]) -> None:
    """Average the fresh gradients of ``params`` over the ranks now (no-op in one process)."""
    if _ACTIVE is not None and is_distributed():
        _ACTIVE.sync(list(params))


# ---------------------------------------------------------------------------------------------- digests
def _sha(tensors: Iterable[Tensor], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_digest(plugin: Any) -> Dict[str, str]:
    """sha256 of a latent-replay plugin's buffer (valid codes and labels) and codec state."""
    buf = getattr(plugin, "buffer", None)
    codec = getattr(plugin, "codec", None)
    out = {"buffer": "empty", "codec": "none"}
    if buf is not None:
        out["buffer"] = _sha([buf.codes[: len(buf)], buf.labels[: len(buf)]], f"{len(buf)}/{buf.capacity}")
    if codec is not None:
        out["codec"] = _sha([v for _, v in sorted(codec.state_dict().items())])
    return out


def _latent_plugins(strategy: Any) -> List[Any]:
    """The strategy's latent-replay plugins (CRUMB, REMIND): those with a code ``buffer`` and a ``codec``.

    Recognised by those attributes, not by class: the plugins import this module, not the reverse.
    """
    return [p for p in strategy.plugins if hasattr(p, "buffer") and hasattr(p, "codec")]


# ---------------------------------------------------------------------------------------------- the run
def _make_run_plugin():
    from avalanche.core import SupervisedPlugin

    class DistributedRun(SupervisedPlugin, supports_distributed=True):
        """Keeps what must be shared identical on every rank (see the module docstring)."""

        def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            _average_float_buffers(strategy.model)

        def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            _check_shared_state(strategy)

    return DistributedRun


DistributedRun = None  # the plugin class, made on first use (Avalanche imports slowly)


def _average_float_buffers(model: nn.Module) -> None:
    """BatchNorm running statistics: the mean over the ranks (each saw its own shard)."""
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    torch.distributed.all_reduce(flat)
    flat.div_(world_size())
    offset = 0
    for b in bufs:
        b.copy_(flat[offset: offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        _helper().broadcast(t.data)


def _check_shared_state(strategy: Any) -> None:
    """Compare weights and replay memories across ranks; adopt rank 0's if they differ (with a warning)."""
    params = _sha(list(strategy.model.state_dict().values()))
    digests = [state_digest(p) for p in _latent_plugins(strategy)]
    everyone = _helper().gather_all_objects((params, digests))
    if any(e[0] != params for e in everyone):
        warnings.warn("torchrun: the model's weights differ across ranks; taking rank 0's", stacklevel=2)
        broadcast_module(strategy.model)
        params = _sha(list(strategy.model.state_dict().values()))
    for i, plugin in enumerate(_latent_plugins(strategy)):
        if any(e[1][i] != digests[i] for e in everyone):
            warnings.warn(f"torchrun: {type(plugin).__name__}'s replay memory differs across ranks; "
                          "taking rank 0's", stacklevel=2)
            state = broadcast_decision(plugin.state_dict() if is_main_process() else None)
            if not is_main_process():
                plugin.load_state_dict(state)
            digests[i] = state_digest(plugin)
    folder = os.environ.get(DUMP_ENV)
    if folder:
        exp = getattr(getattr(strategy, "experience", None), "current_experience", "?")
        line = f"exp={exp} params={params} " + " ".join(
            f"{type(p).__name__}.buffer={d['buffer']} {type(p).__name__}.codec={d['codec']}"
            for p, d in zip(_latent_plugins(strategy), digests))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"rank{rank()}.txt"), "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _Prepared:
    """What :func:`prepare_strategy` installed; :meth:`close` removes it."""

    def __init__(self, strategy: Any, grad: Optional[GradientSync], plugin: Any):
        self.strategy, self.grad, self.plugin = strategy, grad, plugin

    @contextlib.contextmanager
    def plugin_hidden(self) -> Iterator[None]:
        """Without the run's own plugin (checkpoints stay the same for any number of processes)."""
        plugins = self.strategy.plugins
        if self.plugin is None or self.plugin not in plugins:
            yield
            return
        i = plugins.index(self.plugin)
        plugins.pop(i)
        try:
            yield
        finally:
            plugins.insert(i, self.plugin)

    def close(self) -> None:
        global _ACTIVE
        if self.grad is not None:
            self.grad.close()
            if _ACTIVE is self.grad:
                _ACTIVE = None
        if self.plugin is not None and self.plugin in self.strategy.plugins:
            self.strategy.plugins.remove(self.plugin)


def _check_plugins(strategy: Any) -> None:
    """Refuse what would silently diverge across ranks; mark the latent-replay plugins as supported."""
    for p in _latent_plugins(strategy):
        if getattr(p, "lr_scheduler", None) is not None:  # REMIND's per-class lr counts the rank's own labels
            raise ConfigError("REMIND's per-class learning rate (lr_schedule: per_class) counts each rank's own "
                              "examples and is not supported under torchrun yet; use lr_schedule: constant",
                              key="lr_schedule")
        # CRUMB / REMIND subclasses inherit the shared machinery made distributed-safe here
        # (gathered stores, identical replay draws, gradients averaged before clamping).
        p.supports_distributed = True


def prepare_strategy(strategy: Any, global_mb_size: int) -> _Prepared:
    """Make a freshly built (and restored) strategy train data-parallel across the torchrun ranks.

    Splits the mini-batch (:func:`per_rank_batch_size`), gives every rank rank 0's weights,
    averages gradients at every optimiser step, adds the plugin that keeps BatchNorm statistics
    and replay memories identical. A no-op object in one process.
    """
    global _ACTIVE, DistributedRun
    if not is_distributed():
        return _Prepared(strategy, None, None)
    _check_plugins(strategy)
    strategy.train_mb_size = per_rank_batch_size(int(global_mb_size))
    broadcast_module(strategy.model)
    grad = GradientSync(strategy.model)
    _ACTIVE = grad
    if DistributedRun is None:
        DistributedRun = _make_run_plugin()
    plugin = DistributedRun()
    strategy.plugins.append(plugin)  # last: sees the buffers after every other plugin updated them
    return _Prepared(strategy, grad, plugin)

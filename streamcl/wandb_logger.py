"""The ``wandb`` logger: Avalanche's ``WandBLogger`` for one run, working with current wandb releases.

Avalanche 0.6's ``WandBLogger`` calls ``wandb.util.generate_id()`` when it starts a run
and checks every value against ``wandb.viz.CustomChart``; wandb 0.31 (what
``pip install avalanche-lib`` brings today) has neither, so the stock logger fails at its
first run (``AttributeError: module 'wandb.util' has no attribute 'generate_id'``) and at
its first metric. :class:`StreamclWandBLogger` keeps Avalanche's logger and hands it the
wandb module through :class:`_WandbCompat`, which adds the two names back
(``CustomChart`` now lives in ``wandb.plot``); it also finishes its W&B run on ``close()``
(the runner calls it after every run), which Avalanche's leaves open.
"""

from __future__ import annotations

import os
import secrets
import types
from pathlib import Path
from typing import Any, Dict, Optional

from streamcl.errors import missing_extra


class _WandbCompat:
    """The ``wandb`` module as Avalanche 0.6's WandBLogger expects it (``wandb.viz``, ``wandb.util.generate_id``)."""

    def __init__(self, wandb: Any) -> None:
        self._wandb = wandb
        viz = getattr(wandb, "viz", None)
        if viz is None or not hasattr(viz, "CustomChart"):
            chart = getattr(getattr(wandb, "plot", None), "CustomChart", None) or type("NoCustomChart", (), {})
            viz = types.SimpleNamespace(CustomChart=chart)
        self.viz = viz
        util = getattr(wandb, "util", None)
        if util is None or not hasattr(util, "generate_id"):
            util = types.SimpleNamespace(generate_id=lambda: secrets.token_hex(4))  # W&B ids: [a-z0-9]
        self.util = util

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wandb, name)


def _logger_class() -> type:
    from avalanche.logging import WandBLogger

    class StreamclWandBLogger(WandBLogger):
        """Avalanche's WandBLogger on current wandb releases, finished by ``close()``."""

        def import_wandb(self) -> None:
            super().import_wandb()
            self.wandb = _WandbCompat(self.wandb)

        def close(self) -> None:
            """Finish the W&B run (the next run of the experiment would otherwise reuse it)."""
            if getattr(self, "wandb", None) is not None and self.wandb.run is not None:
                self.wandb.finish()

    return StreamclWandBLogger


def wandb_logger(run_dir: Path, config: Optional[Dict[str, Any]] = None) -> Any:
    """Avalanche's WandBLogger for the run in ``run_dir`` (``runs/<experiment>/<cell>/run<k>``).

    Project: ``$WANDB_PROJECT``, else the experiment's name; run name ``<cell>/run<k>``,
    grouped by cell; ``config`` (the cell's config) as the run's hyperparameters; W&B's
    files under ``<run_dir>/wandb``. W&B's own variables apply (``WANDB_MODE=offline`` or
    ``disabled``, ``WANDB_ENTITY``, ``WANDB_API_KEY``, ``WANDB_RUN_ID``). A resumed run starts
    a new W&B run of the same name from the checkpoint's step (W&B refuses steps that go
    back, which those trained after the last checkpoint would). Without the package:
    :func:`~streamcl.errors.missing_extra` (exit code 2).
    """
    try:
        import wandb
    except ImportError:
        raise missing_extra("wandb", "wandb") from None
    run_dir = Path(run_dir)
    return _logger_class()(
        project_name=os.environ.get("WANDB_PROJECT") or run_dir.parent.parent.name or "streamcl",
        run_name=f"{run_dir.parent.name}/{run_dir.name}",
        save_code=False,
        config=config,
        dir=str(run_dir),
        params={"group": run_dir.parent.name, "settings": wandb.Settings(quiet=True)},
    )


__all__ = ["wandb_logger"]

"""One progress bar per run: the ``progress`` logger of an experiment.

Avalanche's ``InteractiveLogger`` draws a bar per epoch and prints every metric
after every evaluation (thousands of lines for a grid); it is still there with
``streamcl run -v``. By default a run gets one tqdm bar over its training
iterations, with the experience and the last accuracy on seen classes as its
postfix. Where stderr is not a terminal (CI logs, ``nohup``), the bar is off and
the runner prints one line per experience instead.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

from avalanche.logging import BaseLogger

from streamcl.results import stream_accuracy


def is_interactive() -> bool:
    """True when progress bars can redraw in place (stderr is a terminal)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class RunProgressLogger(BaseLogger):
    """A tqdm bar over one run's training iterations (``total`` is the runner's estimate)."""

    def __init__(self, desc: str, total: Optional[int] = None, initial: int = 0):
        super().__init__()
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, leave=True,
                        mininterval=0.5)

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        pass

    def after_training_iteration(self, strategy, metric_values: List[Any], **kwargs) -> None:
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            self.bar.total = self.bar.n + 1  # plugins may add iterations the estimate did not count
        self.bar.update(1)

    def after_eval(self, strategy, metric_values: List[Any], **kwargs) -> None:
        acc = stream_accuracy(strategy.evaluator.get_last_metrics())
        exp = strategy.clock.train_exp_counter
        postfix = f"exp {exp}" + (f", acc {100 * acc:.1f}%" if acc is not None else "")
        self.bar.set_postfix_str(postfix, refresh=True)

    def close(self) -> None:
        self.bar.close()


def estimated_iterations(scenario, mb_size: int, first_epochs: int, epochs: int) -> int:
    """Training iterations of a whole stream: epochs x ceil(len(experience) / mini-batch), summed."""
    total = 0
    for t, exp in enumerate(scenario.train_stream):
        n = len(exp.dataset)
        total += (first_epochs if t == 0 else epochs) * -(-n // max(1, mb_size))
    return total

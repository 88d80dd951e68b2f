"""Strategies: CRUMB and REMIND (``avalanche.training.Naive`` + their latent-replay plugin), WA, DyTox.

CRUMB and REMIND take the keyword arguments of ``Naive`` plus those of their plugin (REMIND
also runs its own per-sample training epoch); all have Avalanche's ``train(experience)`` /
``eval(stream)`` interface.
"""

from streamcl.strategies.crumb import CRUMB
from streamcl.strategies.dytox import DyTox
from streamcl.strategies.latent import LatentReplayStrategy, latent_replay_strategy
from streamcl.strategies.remind import REMIND
from streamcl.strategies.wa import WA

__all__ = ["CRUMB", "REMIND", "LatentReplayStrategy", "latent_replay_strategy", "WA", "DyTox"]

"""Strategies: CRUMB and REMIND (``avalanche.training.Naive`` + their latent-replay plugin).

Each takes the keyword arguments of ``Naive`` plus those of its plugin and has
Avalanche's ``train(experience)`` / ``eval(stream)`` interface.
"""

from streamcl.strategies.latent import CRUMB, REMIND, latent_replay_strategy

__all__ = ["CRUMB", "REMIND", "latent_replay_strategy"]

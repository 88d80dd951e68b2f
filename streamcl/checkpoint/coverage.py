"""Which registered strategies and plugins have a resume streamcl's tests do not check, and the warning."""

from __future__ import annotations

import warnings
from typing import Any, Dict

from streamcl.checkpoint.strategy_state import _stateful_plugins

# Registered components whose resume streamcl's tests do not check (tests/test_resume_all.py runs
# every other registered strategy and plugin, interrupted after each experience, and asserts the
# same metrics as an uninterrupted run). Keys are "strategy:<name>" / "plugin:<name>".
_PYTHON_OBJECT = "needs a Python object that YAML cannot give"
_NCM_MODEL = "needs a model with an NCM/FeCAM eval_classifier, not a plain classifier"
_GSS = ("Avalanche 0.6's GSS-greedy fails on the small test stream before any checkpoint (torch.multinomial "
        "on all-zero scores)")
_BIC = ("Avalanche 0.6's BiC assigns experience.dataset, which its own DatasetExperience refuses: it fails "
        "before any checkpoint")
RESUME_NOT_TESTED: Dict[str, str] = {
    # -- strategies
    "strategy:ae_training": "trains an autoencoder: needs a model with feature_module and a decoder",
    "strategy:ar1": "downloads a pretrained MobileNet (no network in tests)",
    "strategy:bic": _BIC,
    "strategy:er_aml": f"{_PYTHON_OBJECT} (feature_extractor)",
    "strategy:expert_gate": "needs an ExpertGate model",
    "strategy:feature_replay": ("keeps replayed trunk features as plain tensors (no sample ids), which checkpoints "
                                "do not store: a resume stops with a CheckpointError"),
    "strategy:gem": "needs the quadprog QP solver, which is not installed",
    "strategy:gss_greedy": _GSS,
    "strategy:generative_replay": "needs a generator for 28x28 images (its default VAE), not 32x32 RGB",
    "strategy:icarl": f"{_PYTHON_OBJECT} (feature_extractor, classifier, buffer_transform)",
    "strategy:joint_training": "trains once on the whole stream, not experience by experience",
    "strategy:l2p": "downloads a pretrained ViT from timm (no network in tests)",
    "strategy:lfl": "needs a model with get_features() (Avalanche's BaseModel)",
    "strategy:pack_net": "needs a PackNet model (PackNetModule)",
    "strategy:pnn": "needs a PNN model",
    "strategy:scr": "needs an SCRModel (projection head)",
    "strategy:streaming_lda": f"{_PYTHON_OBJECT} (slda_model)",
    "strategy:vae_training": "trains a VAE: needs a generative model and spatial targets",
    # -- plugins
    "plugin:bic": _BIC,
    "plugin:current_data_fe_cam_update": _NCM_MODEL,
    "plugin:current_data_ncm_update": _NCM_MODEL,
    "plugin:fe_cam_oracle": _NCM_MODEL,
    "plugin:feature_distillation": "needs a model with features/classifier modules (Avalanche's FeatureExtractorModel)",
    "plugin:gem": "needs the quadprog QP solver, which is not installed",
    "plugin:generative_replay": f"{_PYTHON_OBJECT} (generator_strategy)",
    "plugin:gss_greedy": _GSS,
    "plugin:lfl": "needs a model with get_features() (Avalanche's BaseModel)",
    "plugin:memory_fe_cam_update": _NCM_MODEL,
    "plugin:memory_ncm_update": _NCM_MODEL,
    "plugin:ncm_oracle": _NCM_MODEL,
    "plugin:rar": ("Avalanche's RAR keeps drawing from a half-consumed loader iterator over the previous "
                   "experience's buffer, which no checkpoint can hold: a resumed run differs from the next "
                   "experience on"),
    "plugin:train_generator_after_exp": "trains a generative replay generator: needs a generator model",
}


def warn_unverified(strategy: Any) -> None:
    """Warn (one line each) when resuming a strategy or plugin whose resume streamcl's tests do not cover."""
    from streamcl.registry import PLUGINS, STRATEGIES

    s_name = STRATEGIES.name_of(type(strategy))
    parts = [("strategy", s_name, type(strategy))]
    for p in _stateful_plugins(strategy):
        name = PLUGINS.name_of(type(p))
        if name is not None:  # unregistered plugins are a strategy's own (judged with it) or the user's
            parts.append(("plugin", name, type(p)))
    for kind, name, cls in parts:
        reason = RESUME_NOT_TESTED.get(f"{kind}:{name}") if name is not None else "not a registered component"
        if reason is not None:
            warnings.warn(f"resuming {kind} {name or cls.__qualname__}: its resume is not covered by streamcl's "
                          f"tests ({reason}); the rest of the run may differ from an uninterrupted one",
                          stacklevel=2)

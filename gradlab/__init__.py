"""gradlab: a lab for exploding gradients and gradient clipping, on a NumPy engine.

The package is importable without the CLI: `load_config`, `run_experiment`,
`clip_grad_norm` and `clip_grad_value` are the entry points for notebooks and scripts.
Imports are lazy so that `gradlab --help` does not pay for NumPy or pydantic.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["clip_grad_norm", "clip_grad_value", "load_config", "run_experiment", "UserError"]


def __getattr__(name: str):
    if name in ("clip_grad_norm", "clip_grad_value"):
        from . import clipping

        return getattr(clipping, name)
    if name == "load_config":
        from .config import load_config

        return load_config
    if name == "run_experiment":
        from .experiment import run_experiment

        return run_experiment
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'gradlab' has no attribute {name!r}")

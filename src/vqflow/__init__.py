"""vqflow: unified (multi-class) unsupervised anomaly detection with VQ-Flow."""

__version__ = "0.1.0"

from vqflow.api import evaluate, fit, make_config, predict  # noqa: E402

__all__ = ["__version__", "evaluate", "fit", "make_config", "predict"]

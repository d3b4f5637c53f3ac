"""vqflow: unified (multi-class) unsupervised anomaly detection with VQ-Flow."""

__version__ = "0.1.0"

"""Pure torch modules: the VQ-Flow head, its flow blocks and quantizers, and the Detector."""

from vqflow.model.detector import Detector, Prediction
from vqflow.model.vqflow import VQFlow, VQFlowOutput

__all__ = ["Detector", "Prediction", "VQFlow", "VQFlowOutput"]

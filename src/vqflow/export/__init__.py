"""Deploying a trained run without the training stack.

- `vqflow.export.onnx` (torch, onnx): `export_onnx(run)` writes the Detector as one ONNX
  graph with a dynamic batch axis, plus a JSON sidecar (`vqflow export`).
- `vqflow.export.passes` (onnx): exact clean-ups of the exported graph (the backbone's
  'same' pads folded into its convs).
- `vqflow.export.inferencer` (numpy, Pillow, onnxruntime only; never imports torch):
  `OnnxInferencer(path).predict(paths)` gives scores, maps and verdicts.

This package imports nothing itself, so that the inferencer stays torch-free.
"""

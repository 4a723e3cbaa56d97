"""Deployment: ONNX export (NMS in the graph) and runtimes (ONNX Runtime, OpenVINO, TensorRT)."""

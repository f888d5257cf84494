"""The release path: convert to ONNX, optimize (prune, quantize), verify with gates, and report."""

"""Generated package for protos/tensorflow/core; regenerate with `python -m gateway.protos.generate`."""

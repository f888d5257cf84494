"""Generated package for protos/tensorflow/core/example; regenerate with `python -m gateway.protos.generate`."""

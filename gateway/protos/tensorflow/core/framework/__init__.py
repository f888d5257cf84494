"""Generated package for protos/tensorflow/core/framework; regenerate with `python -m gateway.protos.generate`."""

"""Generated package for protos/tensorflow_serving; regenerate with `python -m gateway.protos.generate`."""

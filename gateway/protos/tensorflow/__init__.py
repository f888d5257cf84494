"""Generated package for protos/tensorflow; regenerate with `python -m gateway.protos.generate`."""

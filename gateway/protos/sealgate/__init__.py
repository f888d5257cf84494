"""Generated package for protos/sealgate; regenerate with `python -m gateway.protos.generate`."""

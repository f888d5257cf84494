"""Generated package for protos/reflection; regenerate with `python -m gateway.protos.generate`."""

"""Generated package for protos/inference; regenerate with `python -m gateway.protos.generate`."""

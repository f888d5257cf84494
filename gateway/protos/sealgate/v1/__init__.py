"""Generated package for protos/sealgate/v1; regenerate with `python -m gateway.protos.generate`."""

"""Generated package for protos/reflection/v1; regenerate with `python -m gateway.protos.generate`."""

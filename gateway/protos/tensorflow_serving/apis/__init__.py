"""Generated package for protos/tensorflow_serving/apis; regenerate with `python -m gateway.protos.generate`."""

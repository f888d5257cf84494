"""Generated package for protos/tensorflow/core/protobuf; regenerate with `python -m gateway.protos.generate`."""

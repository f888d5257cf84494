"""Drift monitoring: reference histograms from the release path (reference.py), sampled streaming histograms
of live inputs with PSI gauges in the gateway (live.py), and the `sealgate monitor` reader (report.py)."""

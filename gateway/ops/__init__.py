"""Operator tooling behind the CLI: `sealgate health`, `--json` output, `--version`, the example configuration.

Each module imports gRPC (or anything heavy) only inside the call that needs it, so `import gateway.cli` stays
offline-light (tests/e2e/test_layering.py).
"""

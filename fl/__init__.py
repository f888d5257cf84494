"""Federated fine-tuning with differential privacy: Flower ServerApp/ClientApp, Opacus DP-SGD, whole-run accounting.

Entry points: `fl.runner.run_federated` (simulation on one machine), `fl.commands.fl_app` (`sealgate fl run`),
`fl.server_app:app` / `fl.client_app:app` (`flwr run`, Deployment Engine; see fl/DEPLOYMENT.md).
"""

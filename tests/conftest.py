"""Fixtures shared by the auth test modules: a dev PKI with its token issuer, and an unrelated second one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import pki


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev PKI, an extra client, and the JWT issuer with its JWKS."""
    d = tmp_path_factory.mktemp("certs")
    pki.write_dev_pki(d)
    pki.add_client(d, "edge")
    pki.write_jwt_issuer(d)
    return d


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated dev PKI (another CA) with its own issuer."""
    d = tmp_path_factory.mktemp("other")
    pki.write_dev_pki(d)
    pki.write_jwt_issuer(d)
    return d

"""A loaded Config cannot change: every section is frozen, lists are tuples, resolve() and replaced() copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from tests import harness

TOML = """
[server]
rest = false

[repository]
version_policy = "specific"
versions = [2, 3]

[tls]
crl = "client.crl"

[keys]
identities = ["a.key", "/abs/b.key"]

[audit]
path = "-"
"""


def _paths(config: Config) -> list[Path]:
    """Every path-valued setting (the empty ones, which mean 'none', left out)."""
    tls, auth = config.tls, config.auth
    strs = [s for s in (tls.crl, auth.jwks_ca, config.audit.path) if s not in ("", "-")]
    return [
        config.repository.path,
        tls.ca,
        tls.cert,
        tls.key,
        auth.jwks,
        *config.keys.identities,
        *config.keys.trusted_signers,
        *map(Path, strs),
    ]


def test_a_loaded_config_cannot_be_changed(tmp_path: Path) -> None:
    toml = tmp_path / "sealgate.toml"
    toml.write_text(TOML)
    config = load_config(toml)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.rest = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tls = dataclasses.replace(config.tls, crl="")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.auth.issuer = "https://evil.example"
    assert config.repository.versions == (2, 3) and config.keys.identities == (tmp_path / "a.key", Path("/abs/b.key"))
    for section in (config, *(getattr(config, f.name) for f in dataclasses.fields(config))):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            assert not isinstance(value, list | dict | set), f"{f.name} can be changed in place"
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(section, f.name, value)
    assert config.server.rest is False and config.audit.path == "-"


def test_resolve_makes_every_path_absolute_and_leaves_its_input_alone(tmp_path: Path) -> None:
    relative = dataclasses.replace(
        Config(),
        tls=dataclasses.replace(Config().tls, crl="ca.crl"),
        auth=dataclasses.replace(Config().auth, jwks_ca="idp.pem"),
    )
    before = repr(relative)
    resolved = relative.resolve(tmp_path)
    assert repr(relative) == before and relative.repository.path == Path("models"), "resolve() changed its input"
    assert resolved is not relative
    assert all(p.is_absolute() and p.is_relative_to(tmp_path) for p in _paths(resolved)), _paths(resolved)
    assert len(_paths(resolved)) == len(_paths(relative)) == 10
    assert not any(p.is_absolute() for p in _paths(relative))
    assert resolved.tls.crl == str(tmp_path / "ca.crl") and resolved.audit.path == str(tmp_path / "audit.log")
    quiet = Config(audit=dataclasses.replace(Config().audit, path="-")).resolve(tmp_path)
    assert quiet.audit.path == "-" and quiet.tls.crl == "" and quiet.auth.jwks_ca == "", "'-' and '' mean none"
    assert load_config(base=tmp_path) == Config().resolve(tmp_path.absolute())


def test_replaced_copies_and_revalidates(tmp_path: Path) -> None:
    env = harness.make_env(tmp_path)
    changed = env.with_config(server={"rest": False, "metrics_address": ""}, keys={"identities": [tmp_path / "x"]})
    assert changed is not env and changed.config.server.rest is False and changed.config.server.metrics_address == ""
    assert changed.config.keys.identities == (tmp_path / "x",), "a list given becomes a tuple"
    assert env.config.server.rest is True and env.config.server.metrics_address == "127.0.0.1:0", "the original moved"
    assert changed.config.server.grpc_address == env.config.server.grpc_address and changed.config.tls == env.config.tls
    with pytest.raises(ConfigError, match="max_concurrent_requests"):
        env.with_config(server={"max_concurrent_requests": -1})
    with pytest.raises(ConfigError, match="algorithm HS256"):
        env.config.replaced(auth={"algorithms": ["ES256", "HS256"]})
    with pytest.raises(ConfigError, match="unknown key 'restt' in \\[server\\]"):
        env.with_config(server={"restt": False})
    with pytest.raises(ConfigError, match="unknown section \\[servr\\]"):
        env.with_config(servr={"rest": False})
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.config = changed.config  # type: ignore[misc]


def test_a_config_with_per_model_tables_survives_the_hand_off_to_front_end_workers(tmp_path: Path) -> None:
    """`[server] workers` pickles the Config to each worker: read-only per-model tables must cross intact."""
    import pickle

    path = tmp_path / "sealgate.toml"
    path.write_text('[server]\nworkers = 2\n[rollout.models.digits]\npromote_after = 7\nmode = "canary"\n')
    config = load_config(path)
    copy = pickle.loads(pickle.dumps(config))  # noqa: S301 - our own bytes, as the supervisor sends them
    assert copy == config and copy.rollout.for_model("digits").promote_after == 7
    with pytest.raises(TypeError):
        copy.rollout.models["digits"]["promote_after"] = 8  # type: ignore[index]

"""The systemd unit (issue 15, deploy/systemd): the sandboxing directives are there with the values that
matter, the paths it lets the service write are exactly what its TOML writes to, and, where systemd is
installed, `systemd-analyze verify` accepts it without a warning and its offline security exposure is low."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "sealgate.service"
TOML = ROOT / "deploy" / "systemd" / "sealgate.toml"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 is fully locked down, 10 is nothing; 1.4 when written


def directives(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit by key, in order (a key may repeat: SystemCallFilter=)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_sandbox_directives() -> None:
    d = directives(UNIT.read_text())
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectHome": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }.items():
        assert d.get(key) == [value], (key, d.get(key))
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""], "no capability at all"
    assert d["User"] == ["sealgate"] and d["Group"] == ["sealgate"], "a dedicated user, never root"
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    filters = " ".join(d["SystemCallFilter"])
    assert "@system-service" in filters and "~@privileged" in filters
    for call in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        assert call in filters, f"{call}: the model workers' sandbox would silently be off"
    [execstart] = d["ExecStart"]
    assert execstart.split()[1:] == ["serve", "--config", "/etc/sealgate/sealgate.toml"]


def test_it_writes_only_where_its_config_writes() -> None:
    d = directives(UNIT.read_text())
    writable = {Path(p) for p in d["ReadWritePaths"][0].split()}
    config = load_config(TOML)  # relative paths resolve against deploy/systemd here, /etc/sealgate installed
    repo = config.repository.path
    audit = Path(config.audit.path).parent
    assert writable == {repo, audit}, writable
    assert "/etc/sealgate/sealgate.toml" in d["ExecStart"][0]
    for path in (config.tls.ca, config.tls.cert, config.tls.key, config.auth.jwks, *config.keys.identities):
        relative = path.relative_to(TOML.parent)  # relative in the TOML: under /etc/sealgate once installed
        assert not relative.is_absolute() and not any(p in writable for p in (Path("/etc/sealgate") / relative).parents)
    state = d["StateDirectory"][0].split()
    assert {f"/var/lib/{s}" for s in state} >= {str(repo)} and d["LogsDirectory"] == [str(audit.name)]
    assert config.server.metrics_address.startswith("127.0.0.1:"), "the unauthenticated metrics stay on loopback"


def _installed_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at this environment's sealgate (verify checks it is executable)."""
    exe = Path(sys.executable).parent / "sealgate"
    if not exe.exists():
        pytest.skip("no sealgate console script in this environment")
    unit = tmp_path / "sealgate.service"
    unit.write_text(text.replace("/opt/sealgate/bin/sealgate", str(exe)))
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _installed_copy(tmp_path, UNIT.read_text())
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and str(unit) not in proc.stderr, proc.stderr
    # the check itself: a misspelt directive is reported (verify then warns, with exit code 0)
    typo = _installed_copy(tmp_path, UNIT.read_text().replace("ProtectSystem=", "ProtectSystm="))
    proc = subprocess.run([analyze, "verify", str(typo)], capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in proc.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _installed_copy(tmp_path, UNIT.read_text())
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True, timeout=60
    )
    if "offline" in proc.stderr and proc.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline")
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-500:] + proc.stderr[-500:]
    assert float(found.group(1)) <= MAX_EXPOSURE, proc.stdout

#!/bin/sh
# Run the built image as Kubernetes would (read-only root, tmpfs /tmp, uid 10001, keys mounted read-only) and
# ask it `sealgate health` over mTLS from the host; then serve a sealed model from a mounted repository.
# Uses `podman run` when it works here, else the image's root file system under unshare + chroot (what this
# machine allows: its crun cannot set rlimits or cgroups). Needs root. Not part of `make test`.
set -eu
IMAGE=${IMAGE:-localhost/sealgate:0.1.0}
PY=${PY:-.venv/bin/python}
PORT=${PORT:-18500}
WORK=$(mktemp -d /tmp/sealgate-smoke.XXXXXX)
ctr=""
cleanup() {
  # unshare --fork ignores SIGTERM while its child runs: stop the gateway (its child) itself, then reap unshare
  [ -n "${pid:-}" ] && { pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; } || true
  [ -n "$ctr" ] && { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
"$PY" -m gateway.cli init --dir "$WORK/certs" >/dev/null
"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
from gateway.artifact.keys import load_recipient, load_signer
from gateway.artifact.sealed import seal_to_file
from tests.models import make_onnx_mlp
work = Path(sys.argv[1])
seal_to_file(make_onnx_mlp(8, (8,), 1, seed=1), work / "models" / "m" / "1.sealed", name="m", version=1,
             signer=load_signer(work / "certs" / "signing.key"), recipients=[load_recipient(work / "certs" / "gateway.pub")])
PYEOF
chmod 0755 "$WORK" && chown -R 10001:10001 "$WORK/certs" "$WORK/models"  # keys stay 0600, owned by the gateway user
cat > "$WORK/sealgate.toml" <<TOML
[server]
grpc_address = "127.0.0.1:$PORT"
rest = false
drain_seconds = 1.0
metrics_address = ""
[repository]
path = "/var/lib/sealgate/models"
[tls]
ca = "/etc/sealgate/tls/ca.pem"
cert = "/etc/sealgate/tls/server.pem"
key = "/etc/sealgate/tls/server.key"
[auth]
jwks = "/etc/sealgate/tls/jwks.json"
[keys]
identities = ["/etc/sealgate/tls/gateway.key"]
trusted_signers = ["/etc/sealgate/tls/signing.pub"]
[audit]
path = "-"
TOML
chmod 0644 "$WORK/sealgate.toml"
if podman run --rm --read-only --tmpfs /tmp "$IMAGE" --version >/dev/null 2>&1; then
  echo "runner: podman run --read-only --tmpfs /tmp"
  podman run --rm --read-only --tmpfs /tmp --network host -v "$WORK/certs:/etc/sealgate/tls:ro" \
    -v "$WORK/sealgate.toml:/etc/sealgate/config/sealgate.toml:ro" -v "$WORK/models:/var/lib/sealgate/models" \
    "$IMAGE" serve > "$WORK/serve.log" 2>&1 &
  pid=$!
else
  echo "runner: unshare + chroot into the image's root file system, mounted read-only, tmpfs on /tmp (podman run fails here)"
  ctr=$(buildah from "$IMAGE")
  root=$(buildah mount "$ctr")
  unshare --mount --fork --kill-child=SIGTERM sh -c "
    mount --bind '$root' '$root' && mount -o remount,bind,ro '$root' &&
    mount -t tmpfs -o size=64m,mode=1777 tmpfs '$root/tmp' &&
    mount -t proc proc '$root/proc' && mount --bind /dev '$root/dev' &&
    mount --bind -o ro '$WORK/certs' '$root/etc/sealgate/tls' &&
    mount --bind -o ro '$WORK' '$root/etc/sealgate/config' &&
    mount --bind '$WORK/models' '$root/var/lib/sealgate/models' &&
    if touch '$root/opt/probe' 2>/dev/null; then echo 'root file system is writable!'; exit 9; fi &&
    exec chroot --userspec=10001:10001 '$root' /usr/bin/env -i PATH=/opt/sealgate/bin:/usr/bin:/bin TMPDIR=/tmp HOME=/tmp \
      SEALGATE_CONFIG=/etc/sealgate/config/sealgate.toml sealgate serve" > "$WORK/serve.log" 2>&1 &
  pid=$!
fi
t0=$(date +%s)
i=0
until "$PY" -m gateway.cli health --address "127.0.0.1:$PORT" --dir "$WORK/certs" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -ge 120 ] || ! kill -0 "$pid" 2>/dev/null; then echo "gateway did not become healthy:"; tail -20 "$WORK/serve.log"; exit 1; fi
  sleep 0.5
done
echo "healthy after $(( $(date +%s) - t0 )) s"
TOKEN=$("$PY" -m gateway.cli token --dir "$WORK/certs" --sub smoke --scope "infer:m")
"$PY" -m gateway.cli health --address "127.0.0.1:$PORT" --dir "$WORK/certs" --model m --token "$TOKEN" \
  || { echo "model m not ready:"; tail -20 "$WORK/serve.log"; exit 1; }
grep -q '"status": *"OK"\|"status":"OK"' "$WORK/serve.log" && echo "audit lines on stderr: yes" || true
echo "gateway process (uid, command): $(ps -eo uid=,args= | grep '[s]ealgate serve' | grep -v unshare | head -1)"

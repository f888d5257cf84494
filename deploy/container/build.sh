#!/bin/sh
# `make image`: build localhost/sealgate:$TAG with buildah, offline except for the two downloads it starts with.
#   1. a Debian base (debootstrap, minbase + python3) imported as localhost/sealgate-debian:bookworm (kept: reused);
#   2. the wheels of sealgate and of deploy/container/requirements-serve.txt (pip wheel, with constraints.txt and
#      the host's pip configuration and indexes) into build/image/context/wheels;
#   3. `buildah bud` of the Containerfile on that context (no network inside).
# Needs root (or a rootless setup with subuids), debootstrap and buildah (Debian packages). Not part of `make test`.
set -eu
TAG=${TAG:-0.1.0}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PY=${PY:-.venv/bin/python}
WORK=build/image
BASE=localhost/sealgate-debian:$SUITE
mkdir -p "$WORK"
t0=$(date +%s)
if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$WORK/rootfs" "$MIRROR"
  fi
  tar -C "$WORK/rootfs" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
      --exclude=./var/cache/apt/archives/*.deb -cf "$WORK/rootfs.tar" .
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$WORK/rootfs.tar" /
  buildah config --env LANG=C.UTF-8 "$ctr"
  buildah commit --rm "$ctr" "$BASE"
fi
t1=$(date +%s)
CTX="$WORK/context"  # the build context: the wheels and two text files, never the source tree or a key
mkdir -p "$CTX/wheels"
"$PY" -m pip wheel -q -w "$CTX/wheels" -c constraints.txt -r deploy/container/requirements-serve.txt ${IMAGE_EXTRAS:-}
rm -f "$CTX"/wheels/sealgate-*.whl
"$PY" -m pip wheel -q -w "$CTX/wheels" --no-deps .
cp constraints.txt deploy/container/requirements-serve.txt "$CTX/"
t2=$(date +%s)
# chroot isolation: RUN steps need no OCI runtime or cgroups (crun refused this machine's hybrid cgroups); it
# allows only the host network, and the install needs none (pip --no-index). BUILDAH_ISOLATION=oci: no network.
ISOLATION=${BUILDAH_ISOLATION:-chroot}
[ "$ISOLATION" = chroot ] && NETWORK=host || NETWORK=none
buildah bud --isolation "$ISOLATION" --network "$NETWORK" --layers -f Containerfile --build-arg BASE="$BASE" \
  --build-arg IMAGE_EXTRAS="${IMAGE_EXTRAS:-}" -t "localhost/sealgate:$TAG" "$CTX"
t3=$(date +%s)
echo "image localhost/sealgate:$TAG: base $((t1 - t0)) s, wheels $((t2 - t1)) s, build $((t3 - t2)) s"

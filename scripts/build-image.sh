#!/usr/bin/env bash
# make image: build the daemon image from deploy/Dockerfile.
#
#   scripts/build-image.sh            builds wasmtop:VERSION (VERSION from pyproject.toml)
#
# Engine: podman when installed, else docker when its engine answers (WASMTOP_ENGINE chooses).
# Base: debian:bookworm-slim when the engine has it or can pull it; otherwise a Debian 12 root
# file system made here from Debian's packages with mmdebstrap and imported as
# localhost/wasmtop-base:bookworm (kept for the next build).
# The image is labelled with a hash of everything the Dockerfile copies: when the image of that
# tag already has the same hash, nothing is rebuilt (WASMTOP_IMAGE_REBUILD=1 forces a build).
# Prints the tag and the image's size last. Exit status: 0 built or current, 1 failed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
tag=${WASMTOP_IMAGE:-wasmtop:$version}
base=${WASMTOP_BASE_IMAGE:-debian:bookworm-slim}
local_base=localhost/wasmtop-base:bookworm
. scripts/debian.sh

engine=${WASMTOP_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  else
    die "no container engine: install podman (apt-get install podman) or start docker"
  fi
fi
command -v "$engine" >/dev/null || die "$engine not found"

# Everything the Dockerfile copies (deploy/Dockerfile's COPY lines, less .dockerignore's).
# The hash covers their contents and modes (the entry point's executable bit), .dockerignore
# and the base image's name.
inputs=(deploy/Dockerfile deploy/image pyproject.toml setup.py README.md wasmtop probes collector
        exporters alerts .dockerignore)
source_hash=$( {
    echo "base $base"
    find "${inputs[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.so' ! -name '*.pyc' \
      -printf '%m %p\n' | LC_ALL=C sort
    find "${inputs[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.so' ! -name '*.pyc' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16)

if [ "${WASMTOP_IMAGE_REBUILD:-0}" != 1 ] \
   && [ "$("$engine" image inspect --format '{{index .Config.Labels "org.wasmtop.source"}}' \
            "$tag" 2>/dev/null || true)" = "$source_hash" ]; then
  log "$tag is current (source $source_hash)"
else
  # The order: present, made here earlier (no pull to wait for again), pulled, made now.
  if "$engine" image inspect "$base" >/dev/null 2>&1; then
    log "base $base (present)"
  elif [ "$base" = debian:bookworm-slim ] && "$engine" image inspect "$local_base" >/dev/null 2>&1; then
    base=$local_base
    log "base $base (made earlier from Debian's packages)"
  elif timeout 60 "$engine" pull -q "$base" >/dev/null 2>&1; then
    log "base $base (pulled)"
  else
    [ "$base" = debian:bookworm-slim ] || die "cannot pull $base (WASMTOP_BASE_IMAGE)"
    command -v mmdebstrap >/dev/null \
      || die "cannot pull $base, and mmdebstrap (apt-get install mmdebstrap) is not there to make one"
    log "cannot pull $base: making a Debian 12 base from Debian's packages ($mirror)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    debian_mmdebstrap "$work/rootfs.tar" >&2
    "$engine" import --change 'CMD ["bash"]' "$work/rootfs.tar" "$local_base" >/dev/null
    base=$local_base
  fi

  build=("$engine" build --network host --build-arg "DEBIAN=$base"
         --label "org.wasmtop.source=$source_hash" -f deploy/Dockerfile -t "$tag")
  # An inspecting HTTPS proxy's CA reaches pip in the build stage as a secret, never a layer.
  ca=${WASMTOP_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
  [ -s "$ca" ] && build+=(--secret "id=ca-certificates,src=$ca")
  [ "$engine" = docker ] && export DOCKER_BUILDKIT=1
  log "building $tag with $engine (source $source_hash)"
  start=$(date +%s)
  "${build[@]}" . >&2
  log "built $tag in $(($(date +%s) - start)) s"
fi

size=$("$engine" image inspect --format '{{.Size}}' "$tag")
echo "$tag $((size / 1000000)) MB"

# Sourced by scripts/build-image.sh and scripts/kernel-matrix.sh: Debian 12 (bookworm) from
# Debian's packages with mmdebstrap. WASMTOP_DEBIAN_MIRROR and WASMTOP_DEBIAN_SECURITY choose
# the mirrors.
mirror=${WASMTOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${WASMTOP_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

# debian_mmdebstrap TARGET [MMDEBSTRAP OPTIONS...]: a bookworm root file system at TARGET (a
# directory, or a .tar), without documentation, manual pages or translations.
debian_mmdebstrap() {
  local target=$1 sources
  shift
  sources=$(mktemp)
  printf '%s\n' "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" >"$sources"
  local aptopts=()
  # A mirror serving snapshots (as this host's does) has Release files past their Valid-Until.
  if apt-config dump 2>/dev/null | grep -q '^Acquire::Check-Valid-Until "false";'; then
    aptopts+=(--aptopt='Acquire::Check-Valid-Until "false"')
  fi
  mmdebstrap --quiet --variant=apt --mode=auto "${aptopts[@]}" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' "$@" bookworm "$target" "$sources"
  local rc=$?
  rm -f "$sources"
  return $rc
}

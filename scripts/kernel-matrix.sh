#!/bin/bash
# make kernel-matrix: run the kernel tests on a second kernel, Debian 12's 6.1 LTS, booted here
# under QEMU, and on this machine's own kernel; print one line per test and kernel.
#
# 1. A Debian 12 root file system with what the probes need (that kernel with its initramfs,
#    its own headers, BCC, bpftool, iproute2) is made from Debian's packages with mmdebstrap and
#    written to an ext4 disk image, cached under $WASMTOP_VM_CACHE (default
#    /var/cache/wasmtop-vm), keyed by the packages' versions and RECIPE below. Nothing of the
#    repository is in it.
# 2. QEMU boots that kernel (TCG: KVM does not work on this host) with the image as its root
#    disk (writes go to a throw-away overlay) and two 9p shares at the paths they have here:
#    this checkout, with its virtual environment, and the Python that environment was made
#    from (read-only). The image's init (wasmtop-vm-init) mounts them and runs
#    scripts/kernel-matrix-vm.sh from the checkout: `wasmtop doctor`, then the tests listed in
#    tests/kernel_matrix.txt, writing JUnit XML to .kernel-matrix/KERNEL/ here.
# 3. The same tests run on this machine's kernel, then one line per test and kernel is printed,
#    and docs-ready tables (probes' status per kernel, tests passed, time).
#
# Exit status: 0 when every selected test passed on every kernel; 1 when one failed or did
# not run; 2 when the VM could not be made or booted (said why).
# Environment: WASMTOP_VM_KERNEL (6.1.0-57-amd64), WASMTOP_VM_CACHE, WASMTOP_VM_TIMEOUT_S
# (2700: the whole VM run), WASMTOP_VM_CPUS (2), WASMTOP_VM_MEMORY_MB (3072),
# WASMTOP_MATRIX_HOST=0 to skip this machine's own run, WASMTOP_DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf 'kernel-matrix: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }
# Any step that fails unforeseen is "could not make or boot the VM" (2), never "a test failed".
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

kver=${WASMTOP_VM_KERNEL:-6.1.0-57-amd64}
cache=${WASMTOP_VM_CACHE:-/var/cache/wasmtop-vm}
timeout_s=${WASMTOP_VM_TIMEOUT_S:-2700}
cpus=${WASMTOP_VM_CPUS:-2}
memory=${WASMTOP_VM_MEMORY_MB:-3072}
. scripts/debian.sh
out=$repo/.kernel-matrix
python=$repo/.venv/bin/python
# Bump when the image's making changes in a way the package versions do not show.
RECIPE=5

[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, and the kernel tests on this machine)"
[ -x "$python" ] || die "no virtual environment: run 'make setup' first"
pyhome=$("$python" -c 'import sys; print(sys.base_prefix)')
# The environment's Python is shared in at its path, unless it is the system's (under /usr:
# the guest's own Debian 12 Python is the same one, and mounting the host's /usr would hide the
# guest's).
shares="wasmtop.share=repo:$repo"
case $pyhome in
  /usr | /usr/*) ;;
  *) shares+=" wasmtop.share=python:$pyhome" ;;
esac
case "$repo $pyhome" in
  *,* | /tmp/* | /run/*) die "the checkout and its Python must not be under /tmp or /run, or hold a comma: $repo $pyhome" ;;
esac
if ! command -v qemu-system-x86_64 >/dev/null; then
  log "installing qemu-system-x86"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 \
    >/dev/null || die "cannot install qemu-system-x86"
fi
for tool in qemu-system-x86_64 mmdebstrap mkfs.ext4; do
  command -v "$tool" >/dev/null || die "$tool not found: 'make setup' installs it"
done

packages=(
  "linux-image-$kver" "linux-headers-$kver" initramfs-tools kmod
  python3 python3-bpfcc bpftool iproute2 procps util-linux mount gcc g++ libc6-dev stress-ng ca-certificates
  libssl3 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 libexpat1 libncursesw6 libreadline8
  libuuid1 libnsl2 libtirpc3 libcrypt1 zlib1g
)

# The cache key: the versions apt would install now, and the recipe.
versions=$( (apt-cache show --no-all-versions "${packages[@]}" 2>/dev/null || true) \
           | awk '/^Package:/ {p=$2} /^Version:/ {print p"="$2}' | LC_ALL=C sort)
[ -n "$versions" ] && grep -q "^linux-image-$kver=" <<<"$versions" \
  || die "apt knows no linux-image-$kver (apt-get update, or set WASMTOP_VM_KERNEL)"
# The key: the versions, the mirrors, and this script and the one it sources (the image's init
# and hooks are written here).
key=$( { echo "recipe $RECIPE $mirror $security"; echo "$versions";
         cat scripts/kernel-matrix.sh scripts/debian.sh; } | sha256sum | cut -c1-16)
image=$cache/debian12-$kver-$key.img
boot=$cache/debian12-$kver-$key.boot

if [ ! -s "$image" ] || [ ! -s "$boot/vmlinuz" ] || [ ! -s "$boot/initrd.img" ]; then
  log "making a Debian 12 root file system for $kver (key $key; a few minutes, once)"
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/make.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # The init the kernel runs (init=): mount the shares, then hand over to the checkout's
  # script, so changing what runs inside needs no new image.
  cat >"$work/init" <<'EOF'
#!/bin/sh
# wasmtop-vm-init: made by scripts/kernel-matrix.sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
modprobe -q 9pnet_virtio; modprobe -q 9p
for share in $(cat /proc/cmdline); do
  case $share in
    wasmtop.share=*)
      spec=${share#wasmtop.share=}; tag=${spec%%:*}; path=${spec#*:}
      mkdir -p "$path"
      mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose "$tag" "$path" \
        || echo "wasmtop-vm: cannot mount $tag at $path"
      ;;
    wasmtop.run=*) run=${share#wasmtop.run=} ;;
  esac
done
if [ -n "$run" ] && [ -f "$run" ]; then
  /bin/bash "$run"
else
  echo "wasmtop-vm: no script to run ($run)"
fi
sync
echo o >/proc/sysrq-trigger
while :; do :; done
EOF
  debian_mmdebstrap "$work/rootfs" \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook="install -m 0755 '$work/init' \"\$1/usr/local/sbin/wasmtop-vm-init\"" \
    --customize-hook='echo wasmtop-vm >"$1/etc/hostname"' \
    --customize-hook='printf "127.0.0.1 localhost wasmtop-vm\n::1 localhost\n" >"$1/etc/hosts"' \
    >&2 || die "mmdebstrap failed"
  mkdir -p "$work/boot"
  cp "$work/rootfs/boot/vmlinuz-$kver" "$work/boot/vmlinuz"
  cp "$work/rootfs/boot/initrd.img-$kver" "$work/boot/initrd.img" \
    || die "the image has no initramfs for $kver"
  size_mb=$(( $(du -sm "$work/rootfs" | cut -f1) + 1024 ))
  truncate -s "${size_mb}M" "$work/rootfs.img"
  mkfs.ext4 -q -L wasmtop-vm -d "$work/rootfs" "$work/rootfs.img" || die "mkfs.ext4 failed"
  rm -rf "$boot"
  mv "$work/boot" "$boot"
  mv "$work/rootfs.img" "$image"
  rm -rf "$work"  # the EXIT trap does not run past the exec at the end
  trap - EXIT
  # Older images of this kernel are of no further use.
  find "$cache" -maxdepth 1 -name "debian12-$kver-*" ! -name "debian12-$kver-$key*" \
    -exec rm -rf {} +
  log "image $image ($(du -sm "$image" | cut -f1) MB)"
else
  log "image $image (cached)"
fi

# -- the VM run ---------------------------------------------------------------------------
rm -rf "${out:?}"  # only this run's kernels are reported
mkdir -p "$out/$kver"
console=$out/$kver/console.log
log "booting $kver under QEMU (TCG, $cpus CPUs, ${memory} MB); console: $console"
started=$(date +%s)
trap - ERR  # QEMU's own exit status is looked at below
set +e
timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$memory" \
  -nographic -no-reboot -monitor none -serial "file:$console" \
  -kernel "$boot/vmlinuz" -initrd "$boot/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 init=/usr/local/sbin/wasmtop-vm-init panic=-1 \
quiet loglevel=3 $shares wasmtop.run=$repo/scripts/kernel-matrix-vm.sh" \
  -drive "file=$image,format=raw,if=virtio,snapshot=on" \
  -fsdev "local,id=repo,path=$repo,security_model=passthrough" \
  -device virtio-9p-pci,fsdev=repo,mount_tag=repo \
  -fsdev "local,id=python,path=$pyhome,security_model=none,readonly=on" \
  -device virtio-9p-pci,fsdev=python,mount_tag=python \
  </dev/null >"$out/$kver/qemu.log" 2>&1
qemu_rc=$?
set -e
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR
elapsed=$(( $(date +%s) - started ))
echo "$elapsed" >"$out/$kver/elapsed_s"
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
  log "the VM did not finish within ${timeout_s} s (WASMTOP_VM_TIMEOUT_S); console: $console"
elif [ "$qemu_rc" -ne 0 ]; then
  log "QEMU exited with $qemu_rc: $(tail -n 3 "$out/$kver/qemu.log" | tr '\n' ' ')"
fi
if ! grep -q "wasmtop-vm: started" "$console" 2>/dev/null; then
  log "the VM never reached wasmtop's script: last console lines:"
  tail -n 15 "$console" >&2 || true
  exit 2
fi
log "VM run: ${elapsed} s"

# -- this machine's kernel ----------------------------------------------------------------
host=$(uname -r)
if [ "${WASMTOP_MATRIX_HOST:-1}" != 0 ]; then
  rm -rf "${out:?}/$host"
  mkdir -p "$out/$host"
  log "running the same tests on this machine ($host)"
  WASMTOP_MATRIX_OUT=$out/$host bash scripts/kernel-matrix-vm.sh >"$out/$host/console.log" 2>&1 || true
fi

exec "$python" scripts/kernel_matrix_report.py "$out"

#!/bin/sh
# merge-kernel-headers.sh SRC DEST: make one kernel header tree that BCC can compile against
# (BCC_KERNEL_SOURCE=DEST) out of Debian's split packages under SRC (default /usr/src):
# linux-headers-VERSION-common (the sources) overlaid with linux-headers-VERSION-ARCH (the
# generated headers and config). The newest version found is used.
set -eu
src=${1:-/usr/src}
dest=${2:?usage: merge-kernel-headers.sh SRC DEST}
arch_dir=$(ls -d "$src"/linux-headers-*-* 2>/dev/null | grep -v -- '-common$' | sort -V | tail -n 1 || true)
if [ -z "$arch_dir" ]; then
  echo "merge-kernel-headers: no linux-headers-VERSION-ARCH directory under $src" >&2
  exit 1
fi
common_dir=$(echo "$arch_dir" | sed 's/-[^-]*$/-common/')
if [ ! -d "$common_dir" ]; then
  echo "merge-kernel-headers: $common_dir missing (it belongs with $arch_dir)" >&2
  exit 1
fi
mkdir -p "$dest"
cp -a "$common_dir/." "$dest/"
cp -a "$arch_dir/." "$dest/"
test -f "$dest/include/linux/kconfig.h" && test -f "$dest/include/generated/autoconf.h" || {
  echo "merge-kernel-headers: $dest lacks include/linux/kconfig.h or include/generated/autoconf.h" >&2
  exit 1
}
echo "merge-kernel-headers: $(basename "$arch_dir") -> $dest"

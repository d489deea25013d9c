#!/bin/sh
# Container entry point: choose the kernel headers BCC compiles the probes against, then run
# wasmtop with the container's arguments (e.g. `daemon --config /etc/wasmtop/wasmtop.yaml`).
#
# In order of preference:
#   1. BCC_KERNEL_SOURCE, when the pod sets it;
#   2. the host's headers for the running kernel: /lib/modules/$(uname -r)/build, with /lib/modules
#      and /usr/src mounted from the host (the DaemonSet does);
#   3. the kernel's own headers, /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS=y), which BCC
#      unpacks into /tmp;
#   4. the Debian headers built into the image (WASMTOP_IMAGE_HEADERS). They are for another
#      kernel version, which is safe here: wasmtop's BPF C reads only tracepoint arguments and
#      BPF contexts, never kernel struct layouts.
set -eu
image_headers=${WASMTOP_IMAGE_HEADERS:-/opt/kernel-headers}
wasmtop=${WASMTOP_BIN:-/opt/wasmtop/bin/wasmtop}
release=$(uname -r)
if [ -n "${BCC_KERNEL_SOURCE:-}" ]; then
  headers="BCC_KERNEL_SOURCE=$BCC_KERNEL_SOURCE"
elif [ -e "/lib/modules/$release/build/include" ]; then
  headers="host /lib/modules/$release/build"
elif [ -e /sys/kernel/kheaders.tar.xz ]; then
  headers="kernel /sys/kernel/kheaders.tar.xz"
elif [ -e "$image_headers/include/linux/kconfig.h" ]; then
  export BCC_KERNEL_SOURCE="$image_headers"
  headers="image $image_headers (no headers for $release on the host)"
else
  echo "wasmtop entrypoint: no kernel headers for $release: mount the host's /lib/modules and" \
    "/usr/src, enable CONFIG_IKHEADERS, or set BCC_KERNEL_SOURCE" >&2
  exit 2
fi
echo "wasmtop entrypoint: kernel $release, headers: $headers" >&2
exec "$wasmtop" "$@"

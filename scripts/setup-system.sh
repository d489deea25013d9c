#!/usr/bin/env bash
# Prepares this host for wasmtop: Debian packages, kernel headers for the running kernel,
# tracefs/debugfs/bpffs mounts. Idempotent: every step checks before it acts.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

arch=$(dpkg --print-architecture)
# python3-bpfcc: BCC's Python module; bpfcc-tools: runqlat-bpfcc for the benchmark;
# bpftool: the tests list programs; stress-ng, linux-perf: workloads; iproute2, libcap2-bin:
# network namespaces and capability tools used by tests; wrk, hey: HTTP load for the
# benchmarks; gcc, python3-dev: the trace-context fast path (probes/_tracefast.c) and the
# cold-start test's tiny native program; g++: a host whose probed function throws (the Rust
# API's probes leave unwinding alone); binutils (strip, nm): a stripped Wasm host and the
# symbols it lost, in the tests; prometheus (promtool),
# prometheus-alertmanager: the integration tests run them on loopback; openssl: test certificates;
# podman, runc, mmdebstrap: `make image` and the container test (runc named: podman would take
# crun, which refuses a hybrid cgroup layout).
packages=(python3-bpfcc bpfcc-tools "linux-headers-$arch" bpftool stress-ng linux-perf iproute2
          libcap2-bin python3-venv python3-dev wrk hey gcc g++ binutils prometheus prometheus-alertmanager
          openssl podman runc mmdebstrap)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run 'make setup' as root" >&2
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build. When the running kernel has no headers
# package, link the distribution's newest headers. Our BPF C uses only tracepoint arguments and
# BPF contexts, never kernel struct layouts, so a different header version is safe.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/include" ]; then
  build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$build" ]; then
    echo "setup: no kernel headers under /usr/src; install linux-headers-$arch" >&2
    exit 1
  fi
  common=${build%-"$arch"}-common
  log "linking kernel headers $build for $kver"
  mkdir -p "$moddir"
  ln -sfn "$build" "$moddir/build"
  [ -d "$common" ] && ln -sfn "$common" "$moddir/source"
fi

mount_if_absent() { # type target
  if ! grep -qs " $2 $1 " /proc/mounts; then
    log "mounting $1 on $2"
    mount -t "$1" nodev "$2"
  fi
}
mount_if_absent tracefs /sys/kernel/tracing
mount_if_absent debugfs /sys/kernel/debug
mount_if_absent bpf /sys/fs/bpf

#!/bin/bash
# What scripts/kernel-matrix.sh runs on each kernel: inside the QEMU guest (started by the
# image's init, as PID 1's child, with the checkout shared at its own path), or on this
# machine with WASMTOP_MATRIX_OUT set. Writes to the output directory (.kernel-matrix/KERNEL):
#   doctor.txt     `wasmtop doctor`, and its exit status
#   junit.xml      the tests of tests/kernel_matrix.txt (pytest's JUnit XML)
#   parts.txt      seconds each step took
echo "wasmtop-vm: started $(uname -r)"
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 WASMTOP_REQUIRE_BPF=1 LANG=C.UTF-8
# A test phase still running after this fails with every thread's stack and the next test runs
# (tests/conftest.py): a hang names its test instead of using up the VM's time.
export WASMTOP_TEST_TIMEOUT_S=${WASMTOP_TEST_TIMEOUT_S:-300}
guest=0
if [ -z "${WASMTOP_MATRIX_OUT:-}" ]; then
  guest=1
  export HOME=/root
  # What a booted system would have mounted: the guest's init mounts only proc, sys and dev.
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  mount -t tmpfs -o mode=0755 tmpfs /run
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  mount -t bpf bpf /sys/fs/bpf
  mount -t debugfs debugfs /sys/kernel/debug
  mount -t tracefs tracefs /sys/kernel/tracing
  mkdir -p /dev/pts /dev/shm /run/netns /var/cache
  mount -t devpts devpts /dev/pts
  mount -t tmpfs tmpfs /dev/shm
  ip link set lo up
  hostname wasmtop-vm
  # As a systemd host has it: descriptors enough for BCC and the tests, and the cgroup
  # controllers the tests' own cgroups use (cpu.max, memory).
  ulimit -n 65536
  echo "+cpu +memory +io +pids" >/sys/fs/cgroup/cgroup.subtree_control
  WASMTOP_MATRIX_OUT=$(pwd)/.kernel-matrix/$(uname -r)
  mkdir -p "$WASMTOP_MATRIX_OUT"
fi
out=$WASMTOP_MATRIX_OUT
mkdir -p "$out"
: >"$out/parts.txt"
part() {  # part NAME COMMAND...: run it, note its seconds
  local name=$1 t0 rc
  shift
  t0=$EPOCHREALTIME
  "$@"
  rc=$?
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" -v rc="$rc" \
    'BEGIN { printf "%s %.1f %d\n", n, b - a, rc }' >>"$out/parts.txt"
  return $rc
}

# The program cache of this run alone: each probe variant is compiled once, then loaded.
export WASMTOP_CACHE_DIR=$out/program-cache
rm -rf "$WASMTOP_CACHE_DIR"
mkdir -p "$WASMTOP_CACHE_DIR"
chmod 0700 "$WASMTOP_CACHE_DIR"

doctor() {
  .venv/bin/wasmtop doctor >"$out/doctor.txt" 2>&1
  local rc=$?
  echo "exit $rc" >>"$out/doctor.txt"
  return $rc
}
part doctor doctor
cat "$out/doctor.txt"

mapfile -t selected < <(grep -v '^\s*#' tests/kernel_matrix.txt | grep -v '^\s*$')
# What the selection holds, so a run cut short shows what it did not run.
.venv/bin/python -m pytest -p no:cacheprovider -q --collect-only "${selected[@]}" 2>/dev/null \
  | grep '::' >"$out/collected.txt"
part tests .venv/bin/python -m pytest -p no:cacheprovider -q -rA --junitxml="$out/junit.xml" \
  -o junit_family=xunit1 --durations=0 "${selected[@]}" 2>&1 | tee "$out/pytest.log"
echo "wasmtop-vm: done"
[ "$guest" = 1 ] && sync
exit 0

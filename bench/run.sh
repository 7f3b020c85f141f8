#!/usr/bin/env bash
# Foundation benchmarks, measured side by side in one run (figures go to
# bench/README.md by hand, with the machine they were taken on):
#   1. `distctl content put` of a 1 GiB file  vs  `dd conv=fsync` of the same bytes
#   2. `distctl content get` of that blob to /dev/null (throughput over the socket)
#   3. daemon peak RSS while writing a 4 GiB blob (streamed from /dev/zero)
#   4. `Store.Collect` over 100,000 small unreferenced blobs
# Usage: bench/run.sh [WORKDIR]   (default /var/tmp/distd-bench; needs ~6 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."

work=${1:-/var/tmp/distd-bench}
rm -rf "$work" && mkdir -p "$work"
cargo build --release --quiet -p distd -p distd-sdk -p distd-bench --bins
bin=target/release
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

start_daemon() { # $1 = name; sets $sock and $daemon_pid
  sock="$work/$1.sock"
  "$bin/distd" --root "$work/$1" --socket "$sock" 2>"$work/$1.log" &
  daemon_pid=$!; pids+=("$daemon_pid")
  for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.1; done
  echo "distd did not start; see $work/$1.log" >&2; exit 1
}

peak_rss_kib() { # samples VmHWM of $1 (the kernel's own high-water mark)
  awk '/VmHWM/ {print $2}' "/proc/$1/status"
}

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
head -c 1G /dev/urandom > "$work/blob-1g"

start_daemon store
drop_caches
t0=$(now); dd if="$work/blob-1g" of="$work/dd.out" bs=4M conv=fsync status=none; t1=$(now)
dd_s=$(secs "$t0" "$t1"); rm -f "$work/dd.out"
drop_caches
t0=$(now); digest=$("$bin/distctl" --socket "$sock" content put "$work/blob-1g"); t1=$(now)
put_s=$(secs "$t0" "$t1")
echo "put:  distctl content put 1 GiB  ${put_s}s   dd conv=fsync ${dd_s}s   ratio $(echo "$put_s / $dd_s" | bc -l | xargs printf '%.2f')x"

for mode in verified no-verify; do
  flag=(); [ "$mode" = no-verify ] && flag=(--no-verify)
  t0=$(now); "$bin/distctl" --socket "$sock" content get "${flag[@]}" "$digest" -o /dev/null 2>/dev/null; t1=$(now)
  get_s=$(secs "$t0" "$t1")
  echo "get:  distctl content get ($mode) 1 GiB to /dev/null ${get_s}s = $(echo "1.073741824 / $get_s" | bc -l | xargs printf '%.2f') GB/s (page cache warm)"
done

rss_before=$(peak_rss_kib "$daemon_pid")
head -c 4G /dev/zero | "$bin/distctl" --socket "$sock" content put - >/dev/null
rss_after=$(peak_rss_kib "$daemon_pid")
echo "rss:  daemon peak RSS $((rss_before / 1024)) MiB before, $((rss_after / 1024)) MiB after writing a 4 GiB blob"
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true

start_daemon gc
"$bin/distd-bench" gc-fill "$sock" "${GC_BLOBS:-100000}" | tee "$work/gc.txt" | sed 's/^/gc:   /'
rm -f "$work/blob-1g"

#!/usr/bin/env bash
# Pull benchmark, measured side by side in one run (figures go to
# bench/README.md by hand, with the machine they were taken on):
#   a 1 GiB image of 8 random uncompressed 128 MiB layers, pushed once to a
#   local Debian `docker-registry` (Distribution 2.8, filesystem storage,
#   plain HTTP on 127.0.0.1), then pulled cold (page cache dropped before
#   each) into a fresh directory on the same filesystem by
#     1. `distctl pull` through a freshly started release `distd`
#        (and the daemon's peak RSS, VmHWM, after the pull)
#     2. `ctr content fetch` into a freshly started containerd
#     3. `skopeo copy` to an OCI layout (layers kept uncompressed)
#     4. `dd bs=4M conv=fsync` of the 8 layer files, one after the other,
#        each to its own file (the durable-write floor: 8 files, 8 fsyncs,
#        like the 8 blobs the pullers commit); the ratios are to this "dd"
#     5. for reference, `cat` of the 8 layer files into one
#        `dd bs=4M conv=fsync` (one file, one fsync: "dd-1file")
#   RUNS times (default 3; the order of the five rotates from run to run),
#   then a table of medians and ratios to dd.
# Usage: [RUNS=3] [LOAD_MAX=1.0] [LOAD_WAIT=2400] [LAYER_MIB=128] bench/pull.sh [WORKDIR_PARENT]
#   WORKDIR_PARENT (default /var/tmp) must be a disk filesystem, not tmpfs;
#   needs ~4 GiB free there. Installs jq, docker-registry, skopeo, containerd
#   and bc with apt when missing (sudo when not root). Before the timed runs it
#   waits (up to LOAD_WAIT s) for the 1-minute load average to fall below
#   LOAD_MAX, since other builds on the machine skew the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
script=pull.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh

runs=${RUNS:-3}
layer_mib=${LAYER_MIB:-128}   # smaller for a quick check of the script itself
load_max=${LOAD_MAX:-1.0}
load_wait=${LOAD_WAIT:-2400}
parent=${1:-/var/tmp}

# ---- install missing tools -------------------------------------------------
APT_TOOLS=(
    # "command:package"
    "jq:jq"                           # writes the layout's JSON
    "bc:bc"                           # arithmetic on timings
    "docker-registry:docker-registry" # the registry (Distribution 2.8)
    "skopeo:skopeo"                   # pushes the layout; one of the pullers
    "containerd:containerd"           # containerd and ctr
    "ctr:containerd"
)
install_tools

cargo build --release --quiet --bin distd --bin distctl
bin=$PWD/target/release

# ---- work directory (same disk as the stores, never tmpfs) ------------------
make_workdir "$parent" distd-pull


describe_machine
echo "== $(containerd --version | cut -d' ' -f3-), $(skopeo --version), docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?')"

# ---- 1. the image: 8 x 128 MiB random layers as an OCI layout --------------
layout=$work/layout
make_layout "$layer_mib"

# ---- 2. the registry, and the push --------------------------------------------
port=$(free_port)
mkdir -p "$work/registry"
cat > "$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
wait_until "docker-registry" curl -sf "http://127.0.0.1:$port/v2/"
policy=$work/policy.json
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$policy"
ref=127.0.0.1:$port/bench/big:1
skopeo --policy "$policy" copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$layout:1" "docker://$ref"
echo "== pushed $ref"

# ---- 3. the timed pulls ---------------------------------------------------------
# Each function pulls (or copies) the 1 GiB cold into $1, a fresh directory,
# and sets $took (seconds). Daemons start before the clock and the cache drop.

run_distd() {
    local d=$1 pid t0 t1
    "$bin/distd" --root "$d/root" --socket "$d/d.sock" 2>"$d/distd.log" &
    pid=$!; pids+=("$pid")
    wait_until "distd" test -S "$d/d.sock"
    drop_caches
    t0=$(now)
    "$bin/distctl" --socket "$d/d.sock" pull "$ref" >"$d/distctl.out" 2>&1 \
        || { cat "$d/distctl.out" "$d/distd.log" >&2; exit 1; }
    t1=$(now)
    took=$(secs "$t0" "$t1")
    rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    cpu_s=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
    stop "$pid"
}

run_containerd() {
    local d=$1 pid t0 t1
    cat > "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$d/c.sock"
[ttrpc]
  address = "$d/c.sock.ttrpc"
EOF
    containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
    pid=$!; pids+=("$pid")
    wait_until "containerd" ctr --address "$d/c.sock" version
    drop_caches
    t0=$(now)
    ctr --address "$d/c.sock" content fetch --plain-http "$ref" >"$d/ctr.out" 2>&1 \
        || { cat "$d/ctr.out" >&2; exit 1; }
    t1=$(now)
    took=$(secs "$t0" "$t1")
    stop "$pid"
}

run_skopeo() {
    local d=$1 t0 t1
    drop_caches
    t0=$(now)
    skopeo --policy "$policy" copy --quiet --src-tls-verify=false \
        --dest-oci-accept-uncompressed-layers "docker://$ref" "oci:$d/layout:1"
    t1=$(now)
    took=$(secs "$t0" "$t1")
}

run_dd() {
    local d=$1 t0 t1 i=0 layer
    drop_caches
    t0=$(now)
    for layer in "${layers[@]}"; do
        i=$((i + 1))
        dd if="$layer" of="$d/layer$i" bs=4M conv=fsync status=none
    done
    t1=$(now)
    took=$(secs "$t0" "$t1")
}

run_dd-1file() {
    local d=$1 t0 t1
    drop_caches
    t0=$(now)
    cat "${layers[@]}" | dd of="$d/image" bs=4M iflag=fullblock conv=fsync status=none
    t1=$(now)
    took=$(secs "$t0" "$t1")
}

if (($(echo "$(load1) >= $load_max" | bc))); then
    echo "== waiting (up to ${load_wait}s) for the 1-minute load average to fall below $load_max"
    deadline=$((SECONDS + load_wait))
    while (($(echo "$(load1) >= $load_max" | bc))) && ((SECONDS < deadline)); do sleep 30; done
    if (($(echo "$(load1) >= $load_max" | bc))); then
        echo "== the load stayed at or above $load_max; timing anyway (compare ratios, not seconds)"
    fi
fi

tools=(distd containerd skopeo dd dd-1file)
declare -A times
rss_all=()
cpu_all=()
for run in $(seq "$runs"); do
    echo "== run $run/$runs (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for k in "${!tools[@]}"; do
        tool=${tools[$(((k + run - 1) % ${#tools[@]}))]}
        dir=$work/run/$tool
        rm -rf "$dir"; mkdir -p "$dir"
        "run_$tool" "$dir"
        stored_mib=$(du -sm --apparent-size "$dir" | cut -f1)
        if ((stored_mib < 8 * layer_mib)); then
            echo "pull.sh: $tool left only $stored_mib MiB in $dir" >&2
            exit 1
        fi
        times[$tool]+="$took "
        line="   $tool: ${took}s, $stored_mib MiB written"
        if [[ $tool == distd ]]; then
            rss_all+=("$rss_kib")
            cpu_all+=("$cpu_s")
            line+="  (daemon peak RSS $((rss_kib / 1024)) MiB, daemon CPU ${cpu_s}s)"
        fi
        echo "$line"
        rm -rf "$dir"
    done
done

median() { # of the numbers in $1
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR] = $1}
        END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
dd_median=$(median "${times[dd]}")
echo
echo "== load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| tool | median s | × dd | runs (s) |"
echo "|---|---|---|---|"
for tool in "${tools[@]}"; do
    m=$(median "${times[$tool]}")
    printf '| %s | %.2f | %.2f× | %s|\n' "$tool" "$m" "$(echo "$m / $dd_median" | bc -l)" "${times[$tool]}"
done
rss_max=$(printf '%s\n' "${rss_all[@]}" | sort -n | tail -1)
echo "distd peak RSS (VmHWM): max $((rss_max / 1024)) MiB over $runs runs ($(printf '%s ' "${rss_all[@]}")KiB)"
echo "distd daemon CPU (user+sys) per pull: $(printf '%s ' "${cpu_all[@]}")s"

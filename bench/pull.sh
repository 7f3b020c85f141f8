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
missing=()
for entry in "${APT_TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if ((${#missing[@]})); then
    echo "pull.sh: installing ${missing[*]}" >&2
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi

cargo build --release --quiet --bin distd --bin distctl
bin=$PWD/target/release

# ---- work directory (same disk as the stores, never tmpfs) ------------------
mkdir -p "$parent"
fstype=$(df --output=fstype "$parent" | tail -1)
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
    echo "pull.sh: $parent is $fstype; give a directory on a disk" >&2
    exit 1
fi
work=$(mktemp -d "$parent/distd-pull.XXXXXX")
pids=()   # processes this script started and has not stopped yet
stop() { # $1 = pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local p kept=()
    for p in "${pids[@]:-}"; do [[ -n $p && $p != "$1" ]] && kept+=("$p"); done
    pids=("${kept[@]:-}")
}
cleanup() {
    local p
    for p in "${pids[@]:-}"; do [[ -n $p ]] && stop "$p"; done
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
load1() { cut -d' ' -f1 /proc/loadavg; }
wait_until() { # $1 = what, $2.. = command; polls for 20 s
    local what=$1; shift
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "pull.sh: $what did not come up; see $work" >&2
    exit 1
}
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hltn "sport = :$port") ]] && echo "$port" && return
    done
}

src_dev=$(df --output=source "$work" | tail -1)
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
echo "== work dir $work: $fstype on $src_dev ($(df -h --output=avail "$work" | tail -1 | tr -d ' ') free)"
df -h /tmp /work "$work" | sed 's/^/   /'
echo "== $(containerd --version | cut -d' ' -f3-), $(skopeo --version), docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?')"

# ---- 1. the image: 8 x 128 MiB random layers as an OCI layout --------------
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
add_blob() { # moves file $1 into the layout; prints its hex digest
    local hex
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$layout/blobs/sha256/$hex"
    echo "$hex"
}
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
layers=()
layer_descs=()
for i in $(seq 8); do
    head -c "${layer_mib}M" /dev/urandom > "$layout/new"
    hex=$(add_blob "$layout/new")
    layers+=("$layout/blobs/sha256/$hex")
    layer_descs+=("$(jq -cn --arg d "sha256:$hex" --argjson s $((layer_mib << 20)) \
        '{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $d, size: $s}')")
done
layer_json=$(printf '%s\n' "${layer_descs[@]}" | jq -cs .)
jq -cn --arg arch "$arch" --argjson layers "$layer_json" \
    '{architecture: $arch, os: "linux", config: {},
      rootfs: {type: "layers", diff_ids: [$layers[].digest]}}' > "$layout/new"
config_size=$(stat -c %s "$layout/new")
config_hex=$(add_blob "$layout/new")
jq -cn --arg c "sha256:$config_hex" --argjson cs "$config_size" --argjson layers "$layer_json" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
      layers: $layers}' > "$layout/new"
manifest_size=$(stat -c %s "$layout/new")
manifest_hex=$(add_blob "$layout/new")
jq -cn --arg m "sha256:$manifest_hex" --argjson ms "$manifest_size" \
    '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: $m, size: $ms, annotations: {"org.opencontainers.image.ref.name": "1"}}]}' \
    > "$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
echo "== image: 8 x $layer_mib MiB layers (application/vnd.oci.image.layer.v1.tar), manifest sha256:${manifest_hex:0:12}"

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

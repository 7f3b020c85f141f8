#!/usr/bin/env bash
# Push benchmark, measured side by side in one run (figures go to
# bench/README.md by hand, with the machine they were taken on):
#   a 1 GiB image of 8 random uncompressed 128 MiB layers (an OCI layout),
#   pushed with everything read cold (page cache dropped before each push)
#   to a local Debian `docker-registry` (Distribution 2.8, filesystem
#   storage, plain HTTP on 127.0.0.1) by
#     1. `distctl push` through a freshly started release `distd` that holds
#        the image (imported once, before the timed runs, as bench/local:1);
#        with the daemon's CPU time (utime+stime) during the push and its
#        peak RSS (VmHWM) after it
#     2. `skopeo copy --preserve-digests` from the OCI layout
#     3. for reference, "curl": the 8 layers and the config sent at once by
#        9 `curl -T` (one POST and one monolithic PUT each), then the
#        manifest: what the registry takes from a client that costs nothing
#   RUNS times (default 3; the order rotates from run to run), then a table
#   of medians and ratios to distd (skopeo's is the skopeo/distd ratio).
#   Every push goes to a freshly started, empty registry on a new port, into
#   a repository name of its own (bench/p-<tool>-<run>): nothing is skipped
#   as already there, and distd, which remembers which repositories of a
#   registry hold a blob, has nothing to mount from. After each push the
#   script checks that the registry serves the tag with the layout's
#   manifest digest (Docker-Content-Digest), and every layer.
# Usage: [RUNS=3] [LOAD_MAX=1.0] [LOAD_WAIT=2400] [LAYER_MIB=128] \
#        [TOOLS="distd skopeo curl"] [DISTD_CONFIG=file.toml] bench/push.sh [WORKDIR_PARENT]
#   WORKDIR_PARENT (default /var/tmp) must be a disk filesystem, not tmpfs;
#   needs ~3.5 GiB free there (3.5 × 8 × LAYER_MIB). DISTD_CONFIG is passed
#   to distd with --config (e.g. a `[push]` section to try another
#   chunk_size or concurrency). Installs jq, bc, curl, time, docker-registry
#   and skopeo with apt when missing (sudo when not root). Before the timed
#   runs it waits (up to LOAD_WAIT s) for the 1-minute load average to fall
#   below LOAD_MAX, since other builds on the machine skew the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
script=push.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh

runs=${RUNS:-3}
layer_mib=${LAYER_MIB:-128}   # smaller for a quick check of the script itself
load_max=${LOAD_MAX:-1.0}
load_wait=${LOAD_WAIT:-2400}
read -r -a tools <<<"${TOOLS:-distd skopeo curl}"
distd_config=${DISTD_CONFIG:-}
parent=${1:-/var/tmp}

for tool in "${tools[@]}"; do
    case $tool in distd | skopeo | curl) ;; *) echo "push.sh: unknown tool $tool in TOOLS" >&2; exit 1 ;; esac
done
if [[ -n $distd_config ]]; then
    distd_config=$(realpath "$distd_config")
fi

# ---- install missing tools -------------------------------------------------
APT_TOOLS=(
    # "command:package"
    "jq:jq"                           # writes the layout's JSON
    "bc:bc"                           # arithmetic on timings
    "curl:curl"                       # checks what the registry serves
    "/usr/bin/time:time"              # wall time, CPU and peak RSS of a command
    "docker-registry:docker-registry" # the registry (Distribution 2.8)
    "skopeo:skopeo"                   # the other pusher
)
install_tools

cargo build --release --quiet --bin distd --bin distctl
bin=$PWD/target/release

# ---- work directory (same disk as the stores, never tmpfs) ------------------
make_workdir "$parent" distd-push

hz=$(getconf CLK_TCK)
cpu_ticks() { # $1 = pid: its user + system time so far, in clock ticks
    # The command name (field 2) may hold spaces: count from after its ")".
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
ticks_secs() { echo "$1 / $hz" | bc -l | xargs printf '%.2f'; }

if echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; then
    cold="page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each push"
else
    cold="page cache NOT dropped (no permission to write /proc/sys/vm/drop_caches): reads are warm"
fi
describe_machine
echo "== $(skopeo --version), docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?')"
echo "== $cold"

# ---- 1. the image: 8 x 128 MiB random layers as an OCI layout --------------
layout=$work/layout
make_layout "$layer_mib"

# ---- 2. distd: a store holding the image ------------------------------------
# The daemon is started afresh for each push (so that VmHWM is that push's
# peak), always on this root.
distd_dir=$work/distd
mkdir -p "$distd_dir"
sock=$distd_dir/d.sock
distd_pid=
start_distd() { # $1 = log file; sets distd_pid
    local args=(--root "$distd_dir/root" --socket "$sock")
    [[ -n $distd_config ]] && args+=(--config "$distd_config")
    rm -f "$sock"
    "$bin/distd" "${args[@]}" 2>"$1" &
    distd_pid=$!; pids+=("$distd_pid")
    wait_until "distd" test -S "$sock"
}
if [[ " ${tools[*]} " == *" distd "* ]]; then
    start_distd "$distd_dir/import.log"
    "$bin/distctl" --socket "$sock" import "$layout" --name bench/local:1 >"$distd_dir/import.out" 2>&1 \
        || { cat "$distd_dir/import.out" "$distd_dir/import.log" >&2; exit 1; }
    stop "$distd_pid"
    echo "== imported the layout into distd as bench/local:1${distd_config:+ (config $distd_config)}"
    if [[ -n $distd_config ]]; then sed 's/^/   /' "$distd_config"; fi
fi
policy=$work/policy.json
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$policy"

# ---- 3. a fresh registry for each push -----------------------------------------
reg_pid=
port=
start_registry() { # $1 = directory; sets reg_pid and port
    local d=$1
    port=$(free_port)
    mkdir -p "$d"
    cat > "$d/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $d/data
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$d/config.yml" >"$d/log" 2>&1 &
    reg_pid=$!; pids+=("$reg_pid")
    wait_until "docker-registry" curl -sf "http://127.0.0.1:$port/v2/"
}

# Checks that the registry serves repository $1's tag 1 as the layout's
# manifest, and each layer with its size.
check_pushed() {
    local repo=$1 base="http://127.0.0.1:$port/v2/$1" served digest size
    served=$(curl -sf -I -H "Accept: application/vnd.oci.image.manifest.v1+json" \
        "$base/manifests/1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}') \
        || true
    if [[ $served != "sha256:$manifest_hex" ]]; then
        echo "push.sh: $repo:1 is served as '${served}', not sha256:$manifest_hex" >&2
        exit 1
    fi
    for digest in "${layer_digests[@]}"; do
        size=$(curl -sf -I "$base/blobs/$digest" | tr -d '\r' \
            | awk -F': ' 'tolower($1) == "content-length" {print $2}') || true
        if [[ $size != $((layer_mib << 20)) ]]; then
            echo "push.sh: $repo does not serve layer $digest (size '${size}')" >&2
            exit 1
        fi
    done
}

# ---- 4. the timed pushes --------------------------------------------------------
# Each function pushes the image into the fresh registry at $port as
# repository $2 (run directory $1) and sets $took (seconds), $cpu (the
# pusher's user+sys seconds: distd's daemon, else the command) and $rss_kib
# (the pusher's peak RSS: distd's VmHWM, else the command's). Daemons start
# before the cache drop and the clock.
timed() { # $1 = output file, $2.. = command; sets took, cmd_cpu and cmd_rss_kib
    local out=$1 e u s; shift
    /usr/bin/time -f '%e %U %S %M' -o "$out.time" "$@" >"$out" 2>&1 \
        || { cat "$out" >&2; return 1; }
    read -r e u s cmd_rss_kib < <(tail -1 "$out.time")
    took=$(printf '%.2f' "$e")
    cmd_cpu=$(echo "$u + $s" | bc -l | xargs printf '%.2f')
}

run_distd() {
    local d=$1 repo=$2 before
    start_distd "$d/distd.log"
    drop_caches
    before=$(cpu_ticks "$distd_pid")
    timed "$d/distctl.out" "$bin/distctl" --socket "$sock" \
        push "127.0.0.1:$port/$repo:1" --from bench/local:1 \
        || { cat "$d/distd.log" >&2; exit 1; }
    cpu=$(ticks_secs $(($(cpu_ticks "$distd_pid") - before)))
    rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$distd_pid/status")
    stop "$distd_pid"
    if grep -qiE 'mounted|skipped' "$d/distctl.out"; then
        echo "push.sh: distd mounted or skipped blobs:" >&2
        cat "$d/distctl.out" >&2
        exit 1
    fi
}

run_skopeo() {
    local d=$1 repo=$2
    drop_caches
    timed "$d/skopeo.out" skopeo --policy "$policy" copy --quiet --preserve-digests \
        --dest-tls-verify=false "oci:$layout:1" "docker://127.0.0.1:$port/$repo:1" \
        || exit 1
    cpu=$cmd_cpu rss_kib=$cmd_rss_kib
}

# The reference: every blob at once, each a POST and one streamed PUT, then
# the manifest. Runs in a `bash -c` under /usr/bin/time (it is exported).
curl_push() { # $1 = repository URL (http://host:port/v2/name), $2 = layout
    local base=$1 layout=$2 hex loc failed=0 p pids=()
    for hex in $(jq -r '.config.digest, .layers[].digest' \
        "$layout/blobs/sha256/$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)" \
        | cut -d: -f2); do
        (
            loc=$(curl -sSf -X POST -D - -o /dev/null "$base/blobs/uploads/" | tr -d '\r' \
                | awk -F': ' 'tolower($1) == "location" {print $2}')
            [[ $loc == /* ]] && loc=${base%%/v2/*}$loc
            [[ $loc == *\?* ]] && loc+="&" || loc+="?"
            curl -sSf -X PUT -H 'Expect:' -H 'Content-Type: application/octet-stream' \
                -T "$layout/blobs/sha256/$hex" "${loc}digest=sha256:$hex" -o /dev/null
        ) &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    ((failed == 0)) || return 1
    hex=$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)
    curl -sSf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$layout/blobs/sha256/$hex" "$base/manifests/1" -o /dev/null
}
export -f curl_push

run_curl() {
    local d=$1 repo=$2
    drop_caches
    timed "$d/curl.out" bash -c 'set -euo pipefail; curl_push "$@"' curl_push \
        "http://127.0.0.1:$port/v2/$repo" "$layout" || exit 1
    cpu=$cmd_cpu rss_kib=$cmd_rss_kib
}

if (($(echo "$(load1) >= $load_max" | bc))); then
    echo "== waiting (up to ${load_wait}s) for the 1-minute load average to fall below $load_max"
    deadline=$((SECONDS + load_wait))
    while (($(echo "$(load1) >= $load_max" | bc))) && ((SECONDS < deadline)); do sleep 30; done
    if (($(echo "$(load1) >= $load_max" | bc))); then
        echo "== the load stayed at or above $load_max; timing anyway (compare ratios, not seconds)"
    fi
fi

declare -A times cpus reg_cpus rsss
for run in $(seq "$runs"); do
    echo "== run $run/$runs (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for k in "${!tools[@]}"; do
        tool=${tools[$(((k + run - 1) % ${#tools[@]}))]}
        dir=$work/run/$tool
        rm -rf "$dir"; mkdir -p "$dir"
        repo=bench/p-$tool-$run
        start_registry "$dir/registry"
        reg_before=$(cpu_ticks "$reg_pid")
        "run_$tool" "$dir" "$repo"
        reg_cpu=$(ticks_secs $(($(cpu_ticks "$reg_pid") - reg_before)))
        check_pushed "$repo"
        stop "$reg_pid"
        times[$tool]+="$took "
        cpus[$tool]+="$cpu "
        reg_cpus[$tool]+="$reg_cpu "
        rsss[$tool]+="$((rss_kib / 1024)) "
        echo "   $tool: ${took}s  (pusher CPU ${cpu}s, peak RSS $((rss_kib / 1024)) MiB; registry CPU ${reg_cpu}s)"
        rm -rf "$dir"
    done
done

median() { # of the numbers in $1
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR] = $1}
        END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
label() {
    case $1 in
        distd) echo "distd (\`distctl push\`)" ;;
        skopeo) echo "skopeo (\`copy\` from \`oci:\`)" ;;
        curl) echo "curl, 9 blobs at once (reference)" ;;
    esac
}
echo
echo "== load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
distd_median=
if [[ -n ${times[distd]:-} ]]; then distd_median=$(median "${times[distd]}"); fi
echo "| pusher | median s | × distd | pusher CPU s | registry CPU s | pusher peak RSS MiB | runs (s) |"
echo "|---|---|---|---|---|---|---|"
for tool in "${tools[@]}"; do
    m=$(median "${times[$tool]}")
    ratio=""
    if [[ -n $distd_median ]]; then
        ratio=$(printf '%.2f×' "$(echo "$m / $distd_median" | bc -l)")
    fi
    printf '| %s | %.2f | %s | %.2f | %.2f | %s | %s|\n' "$(label "$tool")" "$m" "$ratio" \
        "$(median "${cpus[$tool]}")" "$(median "${reg_cpus[$tool]}")" \
        "$(tr ' ' '\n' <<<"${rsss[$tool]}" | grep . | sort -n | tail -1)" "${times[$tool]}"
done
echo "(CPU: medians, user+sys during the push; distd's is the daemon's. Peak RSS: the"
echo " largest of the runs; distd's is the daemon's VmHWM, restarted before each push.)"
if [[ -n ${rsss[distd]:-} ]]; then
    echo "distd per push: peak RSS $(printf '%s ' ${rsss[distd]})MiB; daemon CPU $(printf '%s ' ${cpus[distd]})s"
fi

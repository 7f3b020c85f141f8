#!/usr/bin/env bash
# S3 benchmark: one image pulled through the S3-direct transport vs through
# the registry HTTP API on the same bucket, side by side in one run (figures
# go to bench/README.md by hand, with the machine they were taken on):
#   an image of SIZE_MIB (default 1024) in LAYERS (default 8) random
#   uncompressed layers, pushed once with `skopeo copy --preserve-digests` to
#   a local Debian `docker-registry` (Distribution 2.8, plain HTTP on
#   127.0.0.1) whose storage is its `s3` driver on a bucket of `moto_server`
#   (moto's S3-compatible server on 127.0.0.1; objects over 5 MiB spill to
#   temporary files, put under the work directory), then pulled cold (page
#   cache dropped before each) into a fresh store of a freshly started
#   release `distd` by
#     1. "s3": `distctl pull` with an `[[s3]]` transport on that bucket and a
#        `[[route]]` sending the registry to ["s3"] alone: distd reads the
#        tag, manifest and blobs from the bucket (Distribution's layout)
#     2. "registry": `distctl pull` with the default route (the registry's
#        HTTP API), the registry reading the same bucket
#   RUNS times (default 1; the order alternates from run to run), then a
#   table of medians and the ratio registry/s3. Where the time goes: for
#   each pull the daemon's CPU (utime+stime) and peak RSS (VmHWM), and the
#   CPU time moto and docker-registry spent during it (/proc/PID/stat before
#   and after) and the number of S3 requests moto logged; the registry path
#   puts the registry's process, and its own S3 reads, between distd and the
#   bucket. Each pull must report every byte from the expected transport
#   (`distctl --json pull`'s bytes_by_transport) and leave the whole image
#   in the store.
# Usage: [SIZE_MIB=1024] [LAYERS=8] [RUNS=1] [LOAD_MAX=1.0] [LOAD_WAIT=2400] \
#        bench/s3.sh [WORKDIR_PARENT]
#   SIZE_MIB must be a multiple of LAYERS (e.g. SIZE_MIB=32 LAYERS=2 for a
#   quick check of the script itself). WORKDIR_PARENT (default /var/tmp)
#   must be a disk filesystem, not tmpfs; needs ~4 × SIZE_MIB free there (the
#   layout, moto's objects, one store, and moto's transient multipart parts).
#   moto holds whole objects in memory while it serves or copies them: expect
#   its RSS to reach a few times a layer's size per blob in flight. Installs
#   jq, bc, curl, docker-registry and skopeo with apt when missing (sudo when
#   not root); moto_server comes from pip (`pip install "moto[server]"`, as
#   ./test.sh does). Before the timed runs it waits (up to LOAD_WAIT s) for
#   the 1-minute load average to fall below LOAD_MAX, since other builds on
#   the machine skew the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
script=s3.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh

size_mib=${SIZE_MIB:-1024}
layer_count=${LAYERS:-8}
runs=${RUNS:-1}
load_max=${LOAD_MAX:-1.0}
load_wait=${LOAD_WAIT:-2400}
parent=${1:-/var/tmp}

if ((layer_count < 1 || size_mib % layer_count != 0)); then
    echo "s3.sh: SIZE_MIB ($size_mib) must be a multiple of LAYERS ($layer_count)" >&2
    exit 1
fi
layer_mib=$((size_mib / layer_count))

# ---- install missing tools -------------------------------------------------
APT_TOOLS=(
    # "command:package"
    "jq:jq"                           # writes the layout's JSON, reads distctl's events
    "bc:bc"                           # arithmetic on timings
    "curl:curl"                       # creates the bucket, probes the servers
    "docker-registry:docker-registry" # the registry (Distribution 2.8, s3 driver)
    "skopeo:skopeo"                   # pushes the layout
)
install_tools
if ! command -v moto_server >/dev/null 2>&1; then
    echo "s3.sh: moto_server is not installed: pip install \"moto[server]\" (./test.sh does)" >&2
    exit 1
fi

cargo build --release --quiet -p distd -p distd-sdk --bin distd --bin distctl
bin=$PWD/target/release

# ---- work directory (same disk as the stores, never tmpfs) ------------------
make_workdir "$parent" distd-s3

hz=$(getconf CLK_TCK)
cpu_ticks() { # $1 = pid: its user + system time so far (all threads), in clock ticks
    # The command name (field 2) may hold spaces: count from after its ")".
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
ticks_secs() { echo "$1 / $hz" | bc -l | xargs printf '%.2f'; }
hwm_mib() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
wait_long() { # $1 = what, $2 = seconds, $3.. = command (moto imports a lot of Python first)
    local what=$1 limit=$2; shift 2
    for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$script: $what did not come up; see $work" >&2
    exit 1
}

if echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; then
    cold="page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each pull"
else
    cold="page cache NOT dropped (no permission to write /proc/sys/vm/drop_caches): reads are warm"
fi
moto_version=$(moto_server --version 2>/dev/null || true)
[[ -n $moto_version ]] || moto_version=$(pip show moto 2>/dev/null | awk '/^Version:/ {print "moto " $2}')
describe_machine
echo "== ${moto_version:-moto ?}, $(skopeo --version), docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?')"
echo "== $cold"

# ---- 1. the image: LAYERS random layers as an OCI layout ---------------------
layout=$work/layout
make_layout "$layer_mib" "$layer_count"

# ---- 2. moto, its bucket, and the registry on it -------------------------------
# An Authorization header moto does not check (it checks none until told
# to) but needs to take a request as authenticated: without one it refuses
# anonymous reads of the objects the registry stores `private`.
unchecked_auth="AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=unchecked"
bucket=distd-bench
root_directory=/bench
moto_port=$(free_port)
mkdir -p "$work/moto/tmp"
(
    cd "$work/moto"
    # Objects above 5 MiB go to temporary files: on the work directory's disk.
    exec env -u INITIAL_NO_AUTH_ACTION_COUNT TMPDIR="$work/moto/tmp" \
        moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto/log" 2>&1
) &
moto_pid=$!; pids+=("$moto_pid")
wait_long "moto_server" 60 curl -sf "http://127.0.0.1:$moto_port/moto-api/"
# The pid must be the server's own (pyenv's shim execs it), for its CPU time.
if ! grep -q moto "/proc/$moto_pid/cmdline" 2>/dev/null; then
    echo "s3.sh: pid $moto_pid is not moto_server: $(tr '\0' ' ' <"/proc/$moto_pid/cmdline")" >&2
    exit 1
fi
curl -sSf -X PUT -H "Authorization: $unchecked_auth" "http://127.0.0.1:$moto_port/$bucket" -o /dev/null
moto_endpoint=http://127.0.0.1:$moto_port

reg_port=$(free_port)
mkdir -p "$work/registry"
cat > "$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: test
    secretkey: test
    region: us-east-1
    regionendpoint: $moto_endpoint
    bucket: $bucket
    rootdirectory: $root_directory
    secure: false
    v4auth: true
    forcepathstyle: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$reg_port
EOF
# Distribution's s3 driver panics (LoadCustomCABundleError) on a CA bundle it
# cannot use; moto is plain HTTP.
env -u AWS_CA_BUNDLE docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
reg_pid=$!; pids+=("$reg_pid")
wait_until "docker-registry" curl -sf "http://127.0.0.1:$reg_port/v2/"
echo "== moto on $moto_endpoint (bucket $bucket), docker-registry on 127.0.0.1:$reg_port (s3 driver, rootdirectory $root_directory, redirect disabled)"

policy=$work/policy.json
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$policy"
ref=127.0.0.1:$reg_port/bench/big:1
moto_before=$(cpu_ticks "$moto_pid"); reg_before=$(cpu_ticks "$reg_pid")
t0=$(now)
skopeo --policy "$policy" copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$layout:1" "docker://$ref" \
    || { tail -50 "$work/registry/log" "$work/moto/log" >&2; exit 1; }
t1=$(now)
echo "== pushed $ref in $(secs "$t0" "$t1")s (moto CPU $(ticks_secs $(($(cpu_ticks "$moto_pid") - moto_before)))s," \
    "registry CPU $(ticks_secs $(($(cpu_ticks "$reg_pid") - reg_before)))s;" \
    "peak RSS so far: moto $(hwm_mib "$moto_pid") MiB, registry $(hwm_mib "$reg_pid") MiB)"

# ---- 3. the daemon configs ---------------------------------------------------------
# The same settings but for the route: "s3" sends the registry to the
# bucket alone; "registry" is the default route (the HTTP API).
cat > "$work/s3.toml" <<EOF
[[s3]]
name = "s3"
bucket = "$bucket"
region = "us-east-1"
endpoint = "$moto_endpoint"
root_directory = "$root_directory"
path_style = true
access_key_id = "test"
secret_access_key = "test"
registries = ["127.0.0.1:$reg_port"]

[[route]]
match = "127.0.0.1:$reg_port/*"
transports = ["s3"]
EOF
echo '# the defaults: every registry through its HTTP API (["registry"])' > "$work/registry.toml"

# ---- 4. the timed pulls -----------------------------------------------------------
# pull_with PATH DIR: a fresh daemon (config $work/PATH.toml) on a fresh
# store in DIR pulls $ref cold; sets took, cpu (the daemon's), rss_kib,
# moto_cpu, reg_cpu and s3_requests (lines moto logged during the pull).
pull_with() {
    local path=$1 d=$2 pid t0 t1 moto0 reg0 log0 done_event sources
    "$bin/distd" --config "$work/$path.toml" --root "$d/root" --socket "$d/d.sock" 2>"$d/distd.log" &
    pid=$!; pids+=("$pid")
    wait_until "distd" test -S "$d/d.sock"
    drop_caches
    moto0=$(cpu_ticks "$moto_pid"); reg0=$(cpu_ticks "$reg_pid"); log0=$(wc -l <"$work/moto/log")
    t0=$(now)
    "$bin/distctl" --socket "$d/d.sock" --json pull "$ref" >"$d/distctl.out" 2>&1 \
        || { cat "$d/distctl.out" "$d/distd.log" >&2; exit 1; }
    t1=$(now)
    took=$(secs "$t0" "$t1")
    moto_cpu=$(ticks_secs $(($(cpu_ticks "$moto_pid") - moto0)))
    reg_cpu=$(ticks_secs $(($(cpu_ticks "$reg_pid") - reg0)))
    s3_requests=$(($(wc -l <"$work/moto/log") - log0))
    rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    cpu=$(ticks_secs "$(cpu_ticks "$pid")")
    stop "$pid"
    # Every byte must have come the way this path says.
    done_event=$(tail -1 "$d/distctl.out")
    sources=$(jq -r 'select(.event == "done") | .bytes_by_transport | keys | join(",")' <<<"$done_event" 2>/dev/null || true)
    if [[ $sources != "$path" ]]; then
        echo "s3.sh: the $path pull's bytes came from '${sources}', not $path alone: $done_event" >&2
        exit 1
    fi
    transport_bytes=$(jq -r ".bytes_by_transport[\"$path\"]" <<<"$done_event")
}

if (($(echo "$(load1) >= $load_max" | bc))); then
    echo "== waiting (up to ${load_wait}s) for the 1-minute load average to fall below $load_max"
    deadline=$((SECONDS + load_wait))
    while (($(echo "$(load1) >= $load_max" | bc))) && ((SECONDS < deadline)); do sleep 30; done
    if (($(echo "$(load1) >= $load_max" | bc))); then
        echo "== the load stayed at or above $load_max; timing anyway (compare ratios, not seconds)"
    fi
fi

paths=(s3 registry)
declare -A times cpus moto_cpus reg_cpus requests rsss
for run in $(seq "$runs"); do
    echo "== run $run/$runs (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for k in "${!paths[@]}"; do
        path=${paths[$(((k + run - 1) % ${#paths[@]}))]}
        dir=$work/run/$path
        rm -rf "$dir"; mkdir -p "$dir"
        pull_with "$path" "$dir"
        stored_mib=$(du -sm --apparent-size "$dir/root" | cut -f1)
        if ((stored_mib < size_mib)); then
            echo "s3.sh: the $path pull left only $stored_mib MiB in $dir/root" >&2
            exit 1
        fi
        times[$path]+="$took "
        cpus[$path]+="$cpu "
        moto_cpus[$path]+="$moto_cpu "
        reg_cpus[$path]+="$reg_cpu "
        requests[$path]+="$s3_requests "
        rsss[$path]+="$((rss_kib / 1024)) "
        echo "   $path: ${took}s, $((transport_bytes >> 20)) MiB from $path, $stored_mib MiB stored" \
            "(distd CPU ${cpu}s, peak RSS $((rss_kib / 1024)) MiB; moto CPU ${moto_cpu}s," \
            "$s3_requests S3 requests; registry CPU ${reg_cpu}s)"
        rm -rf "$dir"
    done
done

median() { # of the numbers in $1
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR] = $1}
        END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
label() {
    case $1 in
        s3) echo "s3 (\`[[s3]]\` transport: distd → bucket)" ;;
        registry) echo "registry (HTTP API: distd → registry → bucket)" ;;
    esac
}
echo
echo "== load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== image: $size_mib MiB in $layer_count layers; RUNS=$runs"
s3_median=$(median "${times[s3]}")
echo "| path | median s | × s3 | distd CPU s | moto CPU s | registry CPU s | S3 requests | distd peak RSS MiB | runs (s) |"
echo "|---|---|---|---|---|---|---|---|---|"
for path in "${paths[@]}"; do
    m=$(median "${times[$path]}")
    printf '| %s | %.2f | %.2f× | %.2f | %.2f | %.2f | %s | %s | %s|\n' "$(label "$path")" "$m" \
        "$(echo "$m / $s3_median" | bc -l)" "$(median "${cpus[$path]}")" \
        "$(median "${moto_cpus[$path]}")" "$(median "${reg_cpus[$path]}")" \
        "$(median "${requests[$path]}")" \
        "$(tr ' ' '\n' <<<"${rsss[$path]}" | grep . | sort -n | tail -1)" "${times[$path]}"
done
echo "(CPU: medians, user+sys during the pull; distd's is the daemon's, started afresh"
echo " for each pull. S3 requests: lines moto logged during the pull. Peak RSS: the"
echo " largest of the runs, the daemon's VmHWM.)"
printf 'ratio registry/s3 (median wall time): %.2f×\n' "$(echo "$(median "${times[registry]}") / $s3_median" | bc -l)"
echo "peak RSS over the whole run (VmHWM, push included): moto $(hwm_mib "$moto_pid") MiB, registry $(hwm_mib "$reg_pid") MiB"

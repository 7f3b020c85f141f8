# Shared by bench/pull.sh, bench/push.sh and bench/s3.sh (sourced; not run
# on its own).
# The caller sets `script` (its name, for messages) and APT_TOOLS before
# calling these.

# Installs the Debian packages of the APT_TOOLS entries ("command:package")
# whose command is missing (sudo when not root).
install_tools() {
    local entry missing=() sudo=""
    for entry in "${APT_TOOLS[@]}"; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
    done
    ((${#missing[@]})) || return 0
    echo "$script: installing ${missing[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
}

# Makes the work directory under $1 (a disk, never tmpfs), named after $2;
# sets `work` and `fstype`, and removes it, and stops every process in
# `pids`, at exit.
make_workdir() {
    mkdir -p "$1"
    fstype=$(df --output=fstype "$1" | tail -1)
    if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
        echo "$script: $1 is $fstype; give a directory on a disk" >&2
        exit 1
    fi
    work=$(mktemp -d "$1/$2.XXXXXX")
    pids=()   # processes this script started and has not stopped yet
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
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

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
load1() { cut -d' ' -f1 /proc/loadavg; }
wait_until() { # $1 = what, $2.. = command; polls for 20 s
    local what=$1; shift
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$script: $what did not come up; see $work" >&2
    exit 1
}
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hltn "sport = :$port") ]] && echo "$port" && return
    done
}

# Prints the machine and the work directory's disk.
describe_machine() {
    local src_dev
    src_dev=$(df --output=source "$work" | tail -1)
    echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
    echo "== work dir $work: $fstype on $src_dev ($(df -h --output=avail "$work" | tail -1 | tr -d ' ') free)"
    df -h /tmp /work "$work" | sed 's/^/   /'
}

# Writes the benchmark image to $layout: an OCI layout of $2 (default 8)
# random uncompressed layers of $1 MiB, tagged "1". Sets `layers` (their
# files), `layer_digests`, `manifest_hex` and `manifest_size`.
make_layout() {
    local mib=$1 count=${2:-8} hex arch i layer_descs=() layer_json config_size config_hex
    mkdir -p "$layout/blobs/sha256"
    case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
    layers=()
    layer_digests=()
    for i in $(seq "$count"); do
        head -c "${mib}M" /dev/urandom > "$layout/new"
        hex=$(add_blob "$layout/new")
        layers+=("$layout/blobs/sha256/$hex")
        layer_digests+=("sha256:$hex")
        layer_descs+=("$(jq -cn --arg d "sha256:$hex" --argjson s $((mib << 20)) \
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
    echo "== image: $count x $mib MiB layers (application/vnd.oci.image.layer.v1.tar), manifest sha256:${manifest_hex:0:12}"
}
add_blob() { # moves file $1 into the layout; prints its hex digest
    local hex
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$layout/blobs/sha256/$hex"
    echo "$hex"
}

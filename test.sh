#!/usr/bin/env bash
# Builds everything and runs every test: unit tests and the end-to-end suite
# (tests/, real distd processes). Installs what is missing first, so a fresh
# machine (or CI) needs nothing but a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")"

# ---- install missing tools -------------------------------------------------
# Commands the tests run, and the Debian package that provides each. Later
# suites (registry, S3, engines) add their lines here.
APT_TOOLS=(
    # "command:package"
    "docker-registry:docker-registry" # the origin registry (Distribution 2.8)
    "skopeo:skopeo"                   # pushes OCI layouts to it
    "htpasswd:apache2-utils"          # its basic-auth password file
    "openssl:openssl"                 # test CA, TLS and token-signing keys
)

missing_packages=()
for entry in "${APT_TOOLS[@]}"; do
    command_name="${entry%%:*}"
    package="${entry#*:}"
    if ! command -v "$command_name" >/dev/null 2>&1; then
        missing_packages+=("$package")
    fi
done
if ((${#missing_packages[@]})); then
    echo "test.sh: installing ${missing_packages[*]}" >&2
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing_packages[@]}"
fi

# The S3-compatible server of the S3 tests (moto's stand-alone server) comes
# from PyPI, not Debian.
if ! command -v moto_server >/dev/null 2>&1; then
    echo "test.sh: installing moto[server]" >&2
    pip_command=(python3 -m pip)
    if command -v pip3 >/dev/null 2>&1; then
        pip_command=(pip3)
    elif command -v pip >/dev/null 2>&1; then
        pip_command=(pip)
    fi
    # A Debian-managed Python refuses plain installs (PEP 668).
    "${pip_command[@]}" install -q "moto[server]" ||
        "${pip_command[@]}" install -q --break-system-packages "moto[server]"
    hash -r
    if ! command -v moto_server >/dev/null 2>&1 && command -v pyenv >/dev/null 2>&1; then
        pyenv rehash
    fi
    if ! command -v moto_server >/dev/null 2>&1; then
        echo "test.sh: moto_server is not on PATH after pip install \"moto[server]\"" >&2
        exit 1
    fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi

# ---- build -----------------------------------------------------------------
# One build of every binary and test target: the end-to-end tests start the
# distd and distctl binaries found next to them in target/debug/.
cargo build --workspace --bins --all-targets

# ---- test ------------------------------------------------------------------
# Timeouts and retries live in .config/nextest.toml.
cargo nextest run --workspace --no-fail-fast "$@"

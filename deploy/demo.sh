#!/usr/bin/env bash
# Builds vigil and starts the local demo on 127.0.0.1: three vigil nodes watching three
# PostgreSQL 15 servers with streaming replication and three redis-servers.
# Installs missing build packages with apt when run as root. Ctrl-C stops and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential pkg-config ca-certificates postgresql-15 postgresql-client-15 redis-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

cargo build --release --locked -p vigil --features demo
exec target/release/vigil demo "$@"

#!/usr/bin/env bash
# Installs what `make bench` needs on top of scripts/install-deps.sh (as
# root, idempotent): debootstrap builds the benchmark's Debian images, strace
# finds the files a workload opens.
set -euo pipefail
missing=()
for pkg in debootstrap strace; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
	echo "install-bench-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" </dev/null
fi

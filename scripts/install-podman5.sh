#!/usr/bin/env bash
# Builds podman v5.4.2 (containers/storage 1.57) for the end-to-end tests of
# the TOC-digest lookup path: Debian 12 ships podman 4.3.1, which looks
# additional layers up by compressed blob digest only. The binary is cached
# outside the checkout, so CI's fresh clones on the same machine reuse it:
#   ${PODMAN5_DIR:-/var/cache/poolfs-test/podman-5.4.2}/podman
# It runs with Debian's conmon and runc and scripts/containers.conf (the
# tests set CONTAINERS_CONF). Idempotent; prints the binary's path last.
# 5.4.2 is chosen on purpose: podman 5.5 and later (containers/storage >=
# 1.58) never record layers taken from an additional layer store in
# layers.json, so a second run pulls again (see docs/als-protocol.md).
set -euo pipefail

version=v5.4.2
dir="${PODMAN5_DIR:-/var/cache/poolfs-test/podman-${version#v}}"
bin="$dir/podman"
if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "version ${version#v}\$"; then
	echo "$bin"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "install-podman5: run as root (installs libseccomp-dev, writes $dir)" >&2
	exit 1
fi
# cgo needs the seccomp and sqlite headers; conmon comes with Debian's podman.
need=()
for pkg in libseccomp-dev libsqlite3-dev pkg-config conmon; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]} > 0)); then
	echo "install-podman5: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" </dev/null >&2
fi

go=go
command -v go >/dev/null || go=/usr/local/go/bin/go
echo "install-podman5: building podman $version from the Go module proxy (a few minutes the first time)" >&2
src="$("$go" mod download -json "github.com/containers/podman/v5@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$src" || ! -d "$src" ]]; then
	echo "install-podman5: go mod download gave no module directory" >&2
	exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/podman"
chmod -R u+w "$work/podman"
(cd "$work/podman" && "$go" build -mod=mod \
	-tags "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper libsqlite3 containers_image_openpgp seccomp" \
	-o "$work/podman.bin" ./cmd/podman) >&2
mkdir -p "$dir"
install -m 0755 "$work/podman.bin" "$bin.new"
mv "$bin.new" "$bin"
"$bin" --version >&2
echo "$bin"

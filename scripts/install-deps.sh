#!/usr/bin/env bash
# Installs what poolfs's tests and demo need on Debian 12 (as root).
# Idempotent: when everything is present it does nothing and takes well under a
# second; apt-get update only runs when a package is missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages and a file each must provide (checked with -e / command -v).
#   podman          podman 4.3.1 (containers/storage 1.43)
#   buildah         buildah 1.28 (the e2e test of building on a lazily pulled base)
#   runc            the runtime scripts/containers.conf selects (crun refuses cgroups v1 hybrid)
#   fuse3           fusermount3 (fallback unmount; go-fuse needs it without DirectMount)
#   busybox-static  /bin/busybox, the base layer of the test and demo images
#   uidmap          newuidmap/newgidmap, which podman expects to find
#   util-linux      mount/umount/mountpoint (overlay mounts, lazy unmount)
#   ca-certificates TLS to real registries
#   passwd          useradd/groupadd, for the users the access tests create
#   strace          how `poolfs optimize` finds the files a workload opens (its e2e test)
declare -A want=(
	[podman]=/usr/bin/podman
	[buildah]=/usr/bin/buildah
	[runc]=/usr/sbin/runc
	[fuse3]=/usr/bin/fusermount3
	[busybox-static]=/bin/busybox
	[uidmap]=/usr/bin/newuidmap
	[util-linux]=/usr/bin/mountpoint
	[ca-certificates]=/etc/ssl/certs/ca-certificates.crt
	[passwd]=/usr/sbin/useradd
	[strace]=/usr/bin/strace
)

missing=()
for pkg in "${!want[@]}"; do
	if [[ -e "${want[$pkg]}" ]] && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
		continue
	fi
	missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "install-deps: missing packages ${missing[*]}; run this script as root" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# With recommends, as podman was checked on these machines (machine notes).
	apt-get install -y -qq "${missing[@]}" </dev/null
fi

# The tests and the demo point CONTAINERS_CONF at this committed file.
if [[ ! -f "$repo/scripts/containers.conf" ]]; then
	echo "install-deps: $repo/scripts/containers.conf is missing" >&2
	exit 1
fi

# Checks that tell at once what is wrong, rather than a test failing later.
[[ -e /dev/fuse ]] || echo "install-deps: warning: /dev/fuse does not exist; FUSE tests will fail" >&2
grep -qw overlay /proc/filesystems || echo "install-deps: warning: overlayfs is not in /proc/filesystems" >&2
command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || echo "install-deps: warning: go is not installed (expected /usr/local/go)" >&2

echo "install-deps: ok ($(podman --version), $(runc --version | head -n1), busybox $(busybox 2>&1 | head -n1 | awk '{print $2}'))"

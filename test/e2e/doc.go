// Package e2e holds poolfs's end-to-end tests: they build the poolfs binary,
// run `poolfs serve` against the in-process test registry, and use the mount
// the way podman and overlayfs do.
//
// They are ordinary Go tests (no build tag). They need root, /dev/fuse and
// overlayfs, and the podman tests need podman and runc (scripts/install-deps.sh
// installs them); without those they skip and say why. Set POOLFS_E2E_LOGDIR
// to keep each test's daemon log there; on failure the end of the log is
// printed with the test output anyway. Set POOLFS_E2E_BINARY to test a
// poolfs binary built elsewhere instead of building ./cmd/poolfs.
package e2e

// Package alspath knows the paths of poolfs's additional layer store:
// where under the store's root its two mounts are, and how the names
// inside the pool's mount decode into the layer they ask for (the two path
// grammars of docs/als-protocol.md). It only parses: serving the paths is
// package alsfs's job, and resolving the layers package pool's.
package alspath

const (
	// MountDir is where, under the ALS root, the store is mounted; the
	// storage configuration names "<ROOT>/.pool:ref".
	MountDir = ".pool"
	// TreesDir is where, under the ALS root, the layers' trees are mounted
	// read-only.
	TreesDir = ".trees"
)

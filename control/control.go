// Package control is the daemon's control socket: a small HTTP API on a
// unix socket that only root (the daemon's own user) may use. `poolfs
// status`, `poolfs gc` and `poolfs auth-helper` are its clients.
//
// Requests: GET /status (Status as JSON), POST /gc (trim the disk cache,
// returns CacheStatus), POST /credentials (a JSON object from image
// references to Credentials, the ALS auth-helper format), GET
// /profiles?ref=IMAGE (the startup profiles held for IMAGE's layers, a
// profile.Set as profile.MediaType), POST /profiles (import a profile.Set;
// returns ImportResult), POST /profiles/push (PushRequest: publish the
// profiles of an image's layers to its registry; returns PushResult).
package control

import (
	"time"
)

// DefaultSocket is where the daemon listens and clients connect unless told
// otherwise; podman runs the auth helper without arguments, so it must be
// findable without any.
const DefaultSocket = "/run/poolfs/control.sock"

// SocketEnv overrides DefaultSocket for clients (the auth helper cannot be
// given flags by podman).
const SocketEnv = "POOLFS_CONTROL_SOCKET"

// Status is the daemon's state as `poolfs status` shows it.
type Status struct {
	Mountpoint string `json:"mountpoint"`
	// TreesMountpoint is where the layers' trees are mounted read-only;
	// "" when they are served inside Mountpoint (--in-place-trees).
	TreesMountpoint string        `json:"trees_mountpoint,omitempty"`
	Layers          []LayerStatus `json:"layers"`
	Cache           CacheStatus   `json:"cache"`
	Trees           TreesStatus   `json:"trees"`
}

// TreesStatus is the memory the layers' trees take against its limit.
type TreesStatus struct {
	Bytes      int64 `json:"bytes"`       // trees in memory, and any being built
	MaxBytes   int64 `json:"max_bytes"`   // 0: no limit
	MaxEntries int   `json:"max_entries"` // per layer; 0: no limit
	Loaded     int   `json:"loaded"`      // layers whose tree is in memory
}

// LayerStatus is one layer the pool serves.
type LayerStatus struct {
	Ref          string    `json:"ref"`
	Digest       string    `json:"digest"`
	TOCDigest    string    `json:"toc_digest,omitempty"`
	Size         int64     `json:"size"`
	FetchedBytes int64     `json:"fetched_bytes"` // distinct blob bytes received since the daemon started
	Fetched      float64   `json:"fetched"`       // FetchedBytes / Size, 0..1
	Uses         int64     `json:"uses"`
	LastAccess   time.Time `json:"last_access"`
	// The layer's tree: whether it is in memory, its entries and bytes
	// there, and how often it came back from meta.db after leaving.
	TreeLoaded  bool  `json:"tree_loaded"`
	TreeEntries int   `json:"tree_entries,omitempty"`
	TreeBytes   int64 `json:"tree_bytes,omitempty"`
	TreeLoads   int   `json:"tree_loads,omitempty"`
	// Profile is the layer's startup profile; nil when it has none.
	Profile *ProfileStatus `json:"profile,omitempty"`
}

// ProfileStatus is what the daemon holds and did with a layer's startup
// profile (see package profile).
type ProfileStatus struct {
	// Recorded is how many chunks the profile recorded for the layer has
	// (stored ones refined with this run's startup window); 0: none.
	Recorded int `json:"recorded_chunks"`
	// Loaded says a profile was replayed when the layer was opened;
	// Source says where it came from ("store": meta.db, recorded here or
	// imported; "source": the registry).
	Loaded bool   `json:"loaded"`
	Source string `json:"source,omitempty"`
	// Published: the profile is known to be in the registry.
	Published bool `json:"published"`
	// Chunks of the loaded profile; Fetched of them were not cached when
	// it was replayed; Used of them were read by this run's start.
	Chunks  int `json:"chunks,omitempty"`
	Fetched int `json:"fetched_chunks,omitempty"`
	Used    int `json:"used_chunks,omitempty"`
}

// CacheStatus is the on-disk chunk cache against its cap.
type CacheStatus struct {
	Dir         string `json:"dir"`
	Bytes       int64  `json:"bytes"`
	MaxBytes    int64  `json:"max_bytes"` // 0: no cap
	MemoryBytes int64  `json:"memory_bytes"`
	Hits        int64  `json:"hits"`
	Misses      int64  `json:"misses"`
	Evictions   int64  `json:"evictions"`
	// PendingBytes are fetched chunks still waiting in memory to be
	// written to disk (--disk-write-behind); a daemon killed with SIGKILL
	// loses them and fetches them again.
	PendingBytes int64 `json:"pending_bytes"`
	// Whole-file copies kept for FUSE passthrough, part of Bytes.
	WholeFiles   int64 `json:"whole_files"`
	WholeBytes   int64 `json:"whole_bytes"`
	WholeWritten int64 `json:"whole_written"` // copies written since the daemon started
}

// Credentials is one entry of the ALS auth-helper input.
type Credentials struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identityToken,omitempty"`
}

// GCRequest asks to trim the disk cache down to KeepBytes.
type GCRequest struct {
	KeepBytes int64 `json:"keep_bytes"`
}

// GCResult reports a trim.
type GCResult struct {
	FreedBytes int64       `json:"freed_bytes"`
	Cache      CacheStatus `json:"cache"`
}

// PushRequest asks the daemon to publish the profiles it holds for the
// layers of the image Ref (as it resolved it) to Ref's registry.
type PushRequest struct {
	Ref string `json:"ref"`
}

// PushResult says what was published: an artifact (manifest Digest) in
// Repository whose subject is the image manifest Subject, with the
// profiles of Layers (blob digests).
type PushResult struct {
	Repository string   `json:"repository"`
	Subject    string   `json:"subject"`
	Digest     string   `json:"digest"`
	Layers     []string `json:"layers"`
}

// CredentialsResult says which registries credentials were recorded for
// (names only, never the secrets).
type CredentialsResult struct {
	Registries []string `json:"registries"`
}

// ImportResult reports an import of profiles.
type ImportResult struct {
	Layers int `json:"layers"`
}

// Package heapwarm pays for the daemon's first page faults when it starts
// instead of when the first container does.
//
// A freshly started Go process has no heap to reuse: every byte the first
// layer lookup allocates (the TOC's JSON, its decoded entries, the tree,
// the first chunks) is memory the kernel has to fault in. On the virtual
// machines poolfs runs on, a fault costs 10-15 µs (measured: 64 MiB of
// fresh pages took 0.24 s to touch), which made decoding the python
// image's TOC take 150 ms in a fresh daemon and 55 ms in a warm one. Java
// has -XX:+AlwaysPreTouch for the same reason.
package heapwarm

import "runtime"

const (
	piece    = 64 << 10 // above the small-object sizes: straight from the page heap
	pageSize = 4 << 10
)

// ballast keeps the garbage collector's heap goal above the warmed
// memory. The Go scavenger returns free heap pages to the kernel once the
// heap holds more than about 1.1x its goal, and a small daemon's goal is
// a few MiB; with the ballast counted as live, the goal is at least twice
// its size and the warmed pages stay. The ballast itself is never written
// and so never becomes resident: it costs address space, not memory.
var ballast []byte

// Warm faults in mib MiB of Go heap, then frees it: the allocator hands
// those pages out again (zeroing them, which is cheap next to a fault), so
// the first lookups allocate warm memory. The daemon's resident size grows
// by about mib MiB. Warm(0) does nothing. Call it once, at startup.
func Warm(mib int) {
	if mib <= 0 {
		return
	}
	n := mib << 20
	// Allocated first, so it comes from fresh address space the runtime
	// knows is zero, not from the pages warmed below (which would have to
	// be zeroed, i.e. written).
	ballast = make([]byte, n)
	pieces := make([][]byte, n/piece)
	for i := range pieces {
		b := make([]byte, piece)
		for j := 0; j < len(b); j += pageSize {
			b[j] = 1
		}
		pieces[i] = b
	}
	runtime.KeepAlive(pieces)
	pieces = nil
	runtime.GC()
}

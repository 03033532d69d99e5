package layer

import (
	"context"
	"fmt"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// A program's start is a chain of round trips nothing in the blob's order
// predicts: the kernel reads the executable, the loader then reads its
// interpreter, /etc/ld.so.cache and each library it needs, one after the
// other, and only then does the program run. On a 20 ms link with no
// profile and no prioritized files, that chain was a quarter of python's
// start. But the executable's first chunk already names all of them (its
// PT_INTERP and DT_NEEDED entries): so when a read that had to fetch the
// first chunk of a file finds an ELF executable or shared object, the
// layer fetches the interpreter, the loader's cache and the needed
// libraries (resolved in this layer's tree as the loader would, and their
// own needed libraries in turn) in parallel, in the background, through
// the same singleflight as reads, so the loader finds them cached or on
// their way. They are files the loader reads anyway; a library this layer
// does not have (it may be in another layer) is simply not fetched.

const (
	// elfTimeout bounds one scan and its fetches.
	elfTimeout = 30 * time.Second
	// elfMaxFiles is how many files one scan fetches, libraries of
	// libraries included.
	elfMaxFiles = 64
	// elfMaxDepth is how deep libraries of libraries are followed.
	elfMaxDepth = 4
	// elfWholeFile is the largest file fetched whole; of a larger one only
	// the chunks the loader reads first (the headers, then whatever its
	// own scan needs) are fetched, since which pages of a big library a
	// program touches is not known.
	elfWholeFile = 8 << 20
	// elfParseChunks caps the chunks parsing one file may fetch.
	elfParseChunks = 8
	// elfScans is how many scans may run at once in a layer; a start that
	// runs more programs than that at once is not waiting on one chain.
	elfScans = 4
	// ldCacheMax is the largest /etc/ld.so.cache fetched.
	ldCacheMax = 4 << 20
)

// WithELFDeps turns the fetch of an ELF file's interpreter and libraries
// on the first read of the file (see above) on or off; it is off unless
// given.
func WithELFDeps(on bool) Option { return func(o *options) { o.elfDeps = on } }

// maybeScanELF starts a scan of e if first is e's first chunk, fetched by
// the read that calls it, and starts like an ELF file. Each file is
// scanned at most once per layer.
//
// A layer with prioritized files, or one a profile is replayed into, is
// not scanned: those already say what the start reads, and a scan could
// only add what it does not.
func (l *Layer) maybeScanELF(e *Entry, first []byte) {
	if !l.scansELF() || len(first) < 4 || string(first[:4]) != "\x7fELF" {
		return
	}
	if _, dup := l.elfSeen.LoadOrStore(e.idx, true); dup {
		return
	}
	select {
	case l.elfSlots <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-l.elfSlots }()
		ctx, cancel := context.WithTimeout(context.Background(), elfTimeout)
		defer cancel()
		l.scanELF(ctx, e)
	}()
}

// scansELF reports whether reads in this layer start ELF scans (and
// fetchProgram): the option is on and nothing else says what the start
// reads.
func (l *Layer) scansELF() bool {
	return l.elfDeps && !l.replayed.Load() && len(l.tree.prioritized) == 0
}

// fetchProgram is called by a read that is about to fetch the first chunk
// of e. If e has an execute bit, it is most likely a program the kernel is
// loading: the kernel then maps its segments, which the loader and the
// program fault in at scattered offsets, and the scan needs its dynamic
// segment (near the end of the file) to know the libraries. So all of e,
// up to elfWholeFile, is fetched in the one request the read would have
// made for its first chunk, and the read waits only for that chunk: the
// rest follows on the same connection instead of one round trip later
// (python's 6.8 MB executable is two 4 MiB chunks; the second held its
// dynamic segment). A file of one chunk is left to the read.
func (l *Layer) fetchProgram(e *Entry) {
	if !l.scansELF() || e.Mode&0o111 == 0 || e.Size > elfWholeFile {
		return
	}
	cs := elfPiece(e)
	if len(cs) < 2 {
		return
	}
	mine := l.claim(cs)
	if len(mine) == 0 {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), elfTimeout)
		defer cancel()
		// lead lands every flight it was given, success or not.
		_ = l.lead(ctx, e.Path(), mine, make(map[chunkKey][]byte, len(mine)), fetchOther)
	}()
}

// runtimeFiles are where glibc and musl systems keep the dynamic loader
// and the C library, for the machine the daemon runs on (a container runs
// programs of its host's architecture), in the places Debian, Fedora and
// Alpine put them.
var runtimeFiles = map[string]struct{ loaders, libc, data []string }{
	"amd64": {
		loaders: []string{"/lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"},
		libc:    []string{"/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6"},
		data:    []string{"/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "/usr/lib64/gconv/gconv-modules.cache"},
	},
	"arm64": {
		loaders: []string{"/lib/ld-linux-aarch64.so.1", "/lib/ld-musl-aarch64.so.1"},
		libc:    []string{"/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6"},
		data:    []string{"/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.cache", "/usr/lib64/gconv/gconv-modules.cache"},
	},
}

// runtimeData is the C library's own data a program's start reads
// through it: the loader's cache, the time zone (tzset, on the first
// local time) and the C.UTF-8 locale (setlocale; the locale container
// images mostly set, and the one python coerces the C locale to), besides
// the gconv cache of each architecture above. Each is small.
var runtimeData = []string{"/etc/ld.so.cache", "/etc/localtime", "/usr/lib/locale/C.utf8/LC_CTYPE"}

// runtimeDataMax is the largest runtimeData file fetched.
const runtimeDataMax = 1 << 20

// FetchRuntime fetches the layer's dynamic loader, C library and the
// library's data (runtimeData), each in its own request, all at once, when
// the layer has a loader and reads in it start ELF scans (WithELFDeps, and
// nothing else says what the start reads). Whatever program the container
// runs, if it is dynamically linked the loader and libc are mapped before
// its first instruction, and libc reads its data soon after; fetched when
// the layer opens, they arrive while podman sets the container up, a time
// the link is otherwise idle, instead of each a round trip into the
// program's start. A layer without a loader (the upper layers of an image,
// static images) fetches nothing.
func (l *Layer) FetchRuntime(ctx context.Context) (FetchStats, error) {
	var st FetchStats
	rt, ok := runtimeFiles[runtime.GOARCH]
	if !l.scansELF() || !ok {
		return st, nil
	}
	var files []*Entry
	seen := map[uint32]bool{}
	add := func(paths []string, maxSize int64) int {
		n := 0
		for _, p := range paths {
			e := l.lookupPath(p)
			if e == nil || e.Type != TypeReg || e.Size > maxSize || seen[e.idx] {
				continue
			}
			seen[e.idx] = true
			files = append(files, e)
			n++
		}
		return n
	}
	if add(rt.loaders, elfWholeFile) == 0 {
		return st, nil
	}
	add(rt.libc, elfWholeFile)
	add(slices.Concat(runtimeData, rt.data), runtimeDataMax)
	return l.fetchFilesEach(ctx, "(runtime)", files)
}

// scanELF fetches what the loader will read after e: e's own rest, its
// interpreter and /etc/ld.so.cache as soon as e's program headers are
// parsed, then its needed libraries, each parsed in turn as soon as its
// own headers arrive, so that a library needed only by a library is asked
// for one round trip after that library, not after all of them.
func (l *Layer) scanELF(ctx context.Context, e *Entry) {
	began := time.Now()
	log := l.log.WithField("path", e.Path())
	var mu sync.Mutex
	files, fetchedBytes := 0, int64(0)
	var wg sync.WaitGroup
	// take marks f as handled by this scan, within its cap.
	take := func(f *Entry) bool {
		mu.Lock()
		defer mu.Unlock()
		if files >= elfMaxFiles {
			return false
		}
		if _, dup := l.elfSeen.LoadOrStore(f.idx, true); dup {
			return false
		}
		files++
		return true
	}
	// fetch claims f's chunks at once (so the parse of f, and the
	// loader, wait for this fetch rather than start their own) and
	// fetches them in the background, one request per file.
	fetch := func(f *Entry) {
		mine := l.claim(elfPiece(f))
		if len(mine) == 0 {
			return
		}
		mu.Lock()
		for _, c := range mine {
			fetchedBytes += c.blobEnd - c.blobOff
		}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// lead lands every flight it was given, success or not.
			_ = l.lead(ctx, "(elf)", mine, make(map[chunkKey][]byte, len(mine)), fetchOther)
		}()
	}
	var visit func(f *Entry, depth int)
	visit = func(f *Entry, depth int) {
		defer wg.Done()
		p, info, err := parseELFHeaders(f.Size, l.elfReader(ctx, f))
		if err != nil {
			log.WithError(err).WithField("file", f.Path()).Debug("ELF file not scanned")
			return
		}
		if depth == 0 && info.interp != "" {
			// A program: its own pages, its loader (mapped before
			// anything else) and the loader's cache (read before the
			// first library) are wanted first.
			fetch(f)
			for _, name := range []string{info.interp, "/etc/ld.so.cache"} {
				g := l.lookupPath(name)
				if g != nil && g.Type == TypeReg && (name == info.interp || g.Size <= ldCacheMax) && take(g) {
					fetch(g)
				}
			}
		}
		if err := p.parseDynamic(info); err != nil {
			log.WithError(err).WithField("file", f.Path()).Debug("ELF dynamic section not read")
			return
		}
		dirs := searchDirs(f.Path(), info)
		var next []*Entry
		for _, name := range info.needed {
			if g := l.resolveLib(name, dirs); g != nil && take(g) {
				fetch(g)
				next = append(next, g)
			}
		}
		if depth+1 >= elfMaxDepth || ctx.Err() != nil {
			return
		}
		for _, g := range next {
			wg.Add(1)
			go visit(g, depth+1)
		}
	}
	wg.Add(1)
	visit(e, 0)
	wg.Wait()
	log.WithFields(logrus.Fields{"files": files, "bytes": fetchedBytes, "elapsed": time.Since(began).Round(time.Microsecond)}).
		Debug("fetched an ELF file's interpreter and libraries")
}

// elfPiece is the chunks of f to fetch for the loader: all of a file up to
// elfWholeFile, else the first chunk.
func elfPiece(f *Entry) []*chunk {
	fc := f.file()
	if fc == nil {
		return nil
	}
	cs := fc.chunks
	if f.Size > elfWholeFile {
		cs = cs[:1]
	}
	var out []*chunk
	for _, c := range cs {
		if c.servable() {
			out = append(out, c)
		}
	}
	return out
}

// elfReader reads f's content for the parser, through the cache and the
// singleflight like ReadAt (every byte verified), fetching at most
// elfParseChunks chunks; a read ends at the end of the chunk it starts
// in, so the parser's small steps never fetch a chunk they do not reach.
func (l *Layer) elfReader(ctx context.Context, f *Entry) elfReadFunc {
	fc := f.file()
	have := map[chunkKey][]byte{}
	return func(off int64, n int) ([]byte, error) {
		if fc == nil || off < 0 || off >= f.Size || n <= 0 {
			return nil, nil
		}
		c := fc.chunks[fc.find(off)]
		if !c.servable() {
			return nil, fmt.Errorf("chunk at %d of %q cannot be verified or held: %w", c.fileOff, f.Path(), errNotELF)
		}
		b, ok := have[c.key()]
		if !ok {
			if len(have) >= elfParseChunks {
				return nil, fmt.Errorf("parsing %q would fetch more than %d chunks: %w", f.Path(), elfParseChunks, errNotELF)
			}
			got, err := l.getChunks(ctx, "(elf)", []*chunk{c}, fetchOther)
			if err != nil {
				return nil, err
			}
			b = got[c.key()]
			if int64(len(b)) != c.size {
				return nil, fmt.Errorf("chunk at %d of %q came back with %d of %d bytes", c.fileOff, f.Path(), len(b), c.size)
			}
			have[c.key()] = b
		}
		from := off - c.fileOff
		return b[from:min(int64(len(b)), from+int64(n))], nil
	}
}

// searchDirs lists where the loader looks for a library needed by the
// file at path p (in the layer) with info: DT_RPATH (without DT_RUNPATH),
// DT_RUNPATH, then the usual directories of glibc and musl systems,
// multiarch ones first. ($ORIGIN is p's directory; other loader tokens are
// not expanded, and LD_LIBRARY_PATH is not known here.)
func searchDirs(p string, info *elfInfo) []string {
	origin := "/" + path.Dir(p)
	expand := func(dirs []string) []string {
		var out []string
		for _, d := range dirs {
			d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
			if !strings.Contains(d, "$") && strings.HasPrefix(d, "/") {
				out = append(out, d)
			}
		}
		return out
	}
	var dirs []string
	if len(info.runpath) == 0 {
		dirs = append(dirs, expand(info.rpath)...)
	}
	dirs = append(dirs, expand(info.runpath)...)
	for _, ma := range multiarch(info) {
		dirs = append(dirs, "/usr/local/lib/"+ma, "/lib/"+ma, "/usr/lib/"+ma)
	}
	if info.class == 2 {
		dirs = append(dirs, "/lib64", "/usr/lib64")
	}
	return append(dirs, "/usr/local/lib", "/lib", "/usr/lib")
}

// multiarch names Debian's library directories for the file's machine.
func multiarch(info *elfInfo) []string {
	switch info.machine {
	case 62: // EM_X86_64
		if info.class == 2 {
			return []string{"x86_64-linux-gnu"}
		}
		return []string{"x86_64-linux-gnux32"}
	case 3: // EM_386
		return []string{"i386-linux-gnu"}
	case 183: // EM_AARCH64
		return []string{"aarch64-linux-gnu"}
	case 40: // EM_ARM
		return []string{"arm-linux-gnueabihf", "arm-linux-gnueabi"}
	case 21: // EM_PPC64
		return []string{"powerpc64le-linux-gnu", "powerpc64-linux-gnu"}
	case 22: // EM_S390
		return []string{"s390x-linux-gnu"}
	case 243: // EM_RISCV
		return []string{"riscv64-linux-gnu"}
	}
	return nil
}

// resolveLib finds the regular file the loader would load for a needed
// library name: a name with a slash is a path, others are looked for in
// dirs. nil if this layer has none.
func (l *Layer) resolveLib(name string, dirs []string) *Entry {
	if name == "" || len(name) > elfMaxName {
		return nil
	}
	if strings.Contains(name, "/") {
		if e := l.lookupPath(name); e != nil && e.Type == TypeReg && strings.HasPrefix(name, "/") {
			return e
		}
		return nil
	}
	for _, d := range dirs {
		if e := l.lookupPath(d + "/" + name); e != nil && e.Type == TypeReg {
			return e
		}
	}
	return nil
}

// lookupMaxSteps bounds the path components one lookup walks (symlinks
// expand into more), lookupMaxLinks the symlinks it follows (the
// kernel's 40).
const (
	lookupMaxSteps = 1024
	lookupMaxLinks = 40
)

// lookupPath resolves absolute path p in the layer's tree as the root of
// a container holding only this layer would: symlinks followed (absolute
// ones from the root), ".." of the root is the root. nil if some component
// is missing or the walk is too long.
func (l *Layer) lookupPath(p string) *Entry {
	root := l.Root()
	cur := root
	comps := strings.Split(p, "/")
	links := 0
	for steps := 0; len(comps) > 0; steps++ {
		if steps > lookupMaxSteps {
			return nil
		}
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = &l.tree.entries[cur.parent]
			continue
		}
		if cur.Type != TypeDir {
			return nil
		}
		next := cur.Child(c)
		if next == nil {
			return nil
		}
		if next.Type == TypeSymlink {
			if links++; links > lookupMaxLinks {
				return nil
			}
			target := next.LinkName()
			if strings.HasPrefix(target, "/") {
				cur = root
			}
			comps = append(strings.Split(target, "/"), comps...)
			continue
		}
		cur = next
	}
	return cur
}

package cache

// tiered puts a fast, small cache in front of a slow, large one.
type tiered struct {
	mem, disk Cache
}

// NewTiered returns a Cache that reads mem first and then disk, copying disk
// hits into mem so that a hot chunk is read from disk (and verified) once,
// and that writes every Add to both.
func NewTiered(mem, disk Cache) Cache {
	return &tiered{mem: mem, disk: disk}
}

func (t *tiered) Get(key string) ([]byte, bool) {
	if b, ok := t.mem.Get(key); ok {
		return b, true
	}
	b, ok := t.disk.Get(key)
	if !ok {
		return nil, false
	}
	t.mem.Add(key, b)
	return b, true
}

func (t *tiered) Add(key string, b []byte) {
	t.mem.Add(key, b)
	t.disk.Add(key, b)
}

// Keep hands b to the memory tier without a copy where it can take it,
// and writes it to disk like Add.
func (t *tiered) Keep(key string, b []byte) {
	if k, ok := t.mem.(Keeper); ok {
		k.Keep(key, b)
	} else {
		t.mem.Add(key, b)
	}
	t.disk.Add(key, b)
}

// Has reports whether either tier holds key; a tier that cannot peek counts
// as not holding it.
func (t *tiered) Has(key string) bool {
	for _, c := range []Cache{t.mem, t.disk} {
		if p, ok := c.(Peeker); ok && p.Has(key) {
			return true
		}
	}
	return false
}

package cache

import (
	"bytes"
	"slices"
	"sort"
	"testing"
)

func TestMemoryBoundAndOrder(t *testing.T) {
	type op struct {
		get  bool
		key  string
		size int
	}
	add := func(k string, n int) op { return op{key: k, size: n} }
	get := func(k string) op { return op{get: true, key: k} }

	tests := []struct {
		name          string
		max           int64
		ops           []op
		want          []string
		wantBytes     int64
		wantEvictions int64
	}{
		{"under bound keeps all", 12, []op{add("a", 4), add("b", 4), add("c", 4)}, []string{"a", "b", "c"}, 12, 0},
		{"oldest evicted first", 10, []op{add("a", 4), add("b", 4), add("c", 4)}, []string{"b", "c"}, 8, 1},
		{"get refreshes", 10, []op{add("a", 4), add("b", 4), get("a"), add("c", 4)}, []string{"a", "c"}, 8, 1},
		{"big entry evicts several", 10, []op{add("a", 3), add("b", 3), add("c", 3), add("d", 9)}, []string{"d"}, 9, 3},
		{"oversize not kept", 10, []op{add("a", 4), add("x", 11)}, []string{"a"}, 4, 0},
		{"exactly the bound is kept", 10, []op{add("a", 10)}, []string{"a"}, 10, 0},
		{"replace adjusts bytes", 10, []op{add("a", 8), add("a", 2), add("b", 8)}, []string{"a", "b"}, 10, 0},
		{"oversize replacement drops old value", 10, []op{add("a", 4), add("a", 11)}, nil, 0, 0},
		{"zero bound keeps nothing", 0, []op{add("a", 1)}, nil, 0, 0},
		{"empty value is kept", 0, []op{add("a", 0)}, []string{"a"}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemory(tc.max)
			for _, o := range tc.ops {
				if o.get {
					m.Get(o.key)
				} else {
					m.Add(o.key, fill(o.size, o.key[0]))
				}
			}
			m.mu.Lock()
			got := m.lru.Keys()
			m.mu.Unlock()
			sort.Strings(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("keys = %v, want %v", got, tc.want)
			}
			s := m.Stats()
			if s.Bytes != tc.wantBytes {
				t.Errorf("Bytes = %d, want %d", s.Bytes, tc.wantBytes)
			}
			if s.Evictions != tc.wantEvictions {
				t.Errorf("Evictions = %d, want %d", s.Evictions, tc.wantEvictions)
			}
		})
	}
}

func TestMemoryValuesAreNotShared(t *testing.T) {
	m := NewMemory(100)
	in := []byte("hello")
	m.Add("k", in)
	in[0] = 'J' // a caller reusing its buffer must not change the entry

	b, ok := m.Get("k")
	if !ok || string(b) != "hello" {
		t.Fatalf("Get = %q, %v; want hello, true", b, ok)
	}
	if cap(b) != len(b) {
		t.Errorf("cap = %d, want %d so appends reallocate", cap(b), len(b))
	}
	_ = append(b, '!')
	if b2, _ := m.Get("k"); !bytes.Equal(b2, []byte("hello")) {
		t.Errorf("after append by caller, Get = %q", b2)
	}
}

func TestMemoryStats(t *testing.T) {
	m := NewMemory(100)
	m.Add("a", []byte("1"))
	m.Get("a")
	m.Get("a")
	m.Get("b")
	want := Stats{Hits: 2, Misses: 1, Adds: 1, Bytes: 1}
	if got := m.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	if m.Len() != 1 {
		t.Errorf("Len = %d, want 1", m.Len())
	}
}

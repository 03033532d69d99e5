package mountpoint

import "testing"

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{`/tmp/a\040b\011c\134d`, "/tmp/a b\tc\\d"},
		{`/x\04`, `/x\04`},   // too short to be an escape
		{`/x\089`, `/x\089`}, // not octal
		{`/plain`, `/plain`},
	}
	for _, tt := range tests {
		if got := unescape(tt.in); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMountsAndMounted(t *testing.T) {
	ms, err := Mounts()
	if err != nil || len(ms) == 0 {
		t.Fatalf("Mounts: %d entries, %v", len(ms), err)
	}
	if ok, err := Mounted("/proc"); err != nil || !ok {
		t.Errorf("Mounted(/proc) = %v, %v", ok, err)
	}
	if ok, err := Mounted(t.TempDir()); err != nil || ok {
		t.Errorf("Mounted(temp dir) = %v, %v", ok, err)
	}
}

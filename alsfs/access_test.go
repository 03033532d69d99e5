package alsfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestParseGroups(t *testing.T) {
	tests := []struct {
		status string
		want   map[uint32]bool
		ok     bool
	}{
		{"Name:\tx\nGroups:\t4 27 1001 \nNSpid:\t1\n", map[uint32]bool{4: true, 27: true, 1001: true}, true},
		{"Groups:\t\n", map[uint32]bool{}, true},
		{"Groups:\t4 x\n", nil, false},
		{"Name:\tx\n", nil, false},
	}
	for _, tc := range tests {
		got, err := parseGroups([]byte(tc.status))
		if (err == nil) != tc.ok || (tc.ok && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("parseGroups(%q) = %v, %v", tc.status, got, err)
		}
	}
}

func TestAccessCheck(t *testing.T) {
	self := uint32(os.Getpid())
	mine, err := procGroups(self)
	if err != nil {
		t.Fatal(err)
	}
	notMine := uint32(64000)
	for mine[notMine] {
		notMine++
	}
	var someGroup uint32
	for g := range mine {
		someGroup = g
	}
	caller := func(uid, gid, pid uint32) context.Context {
		return fuse.NewContext(context.Background(), &fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}, Pid: pid})
	}
	group := Access{Group: true, GID: notMine}
	tests := []struct {
		name   string
		access Access
		ctx    context.Context
		ok     bool
	}{
		{"not a FUSE request", Access{}, context.Background(), true},
		{"root", Access{}, caller(0, 0, self), true},
		{"user", Access{}, caller(1000, 1000, self), false},
		{"user in the group (primary), none let in", Access{}, caller(1000, notMine, self), false},
		{"user in the group (primary)", group, caller(1000, notMine, self), true},
		{"user outside the group", group, caller(1000, 1000, self), false},
		{"user whose pid is gone", group, caller(1000, 1000, 0), false},
	}
	if len(mine) > 0 {
		tests = append(tests, struct {
			name   string
			access Access
			ctx    context.Context
			ok     bool
		}{"user in the group (supplementary)", Access{Group: true, GID: someGroup}, caller(1000, 1000, self), true})
	}
	for _, tc := range tests {
		err := tc.access.check(tc.ctx)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrAccess)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestPrepareRoot(t *testing.T) {
	const gid = 4321
	tests := []struct {
		name     string
		access   Access
		existing os.FileMode // 0: ROOT does not exist yet
		gid      int
		wantMode os.FileMode
		wantGID  uint32
		warns    bool
	}{
		{"created, root only", Access{}, 0, 0, 0o700, 0, false},
		{"created, group", Access{Group: true, GID: gid}, 0, 0, 0o750, gid, false},
		{"existing 0700", Access{}, 0o700, 0, 0o700, 0, false},
		{"existing 0755", Access{}, 0o755, 0, 0o755, 0, true},
		{"existing 0750 and no group let in", Access{}, 0o750, 0, 0o750, 0, true},
		{"existing 0750 of the group", Access{Group: true, GID: gid}, 0o750, gid, 0o750, gid, false},
		{"existing 0700, group let in", Access{Group: true, GID: gid}, 0o700, gid, 0o700, gid, true},
		{"existing 0750 of another group", Access{Group: true, GID: gid}, 0o750, 0, 0o750, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if os.Geteuid() != 0 && (tc.access.Group || tc.gid != 0) {
				t.Skip("needs root to give a directory to a group")
			}
			root := filepath.Join(t.TempDir(), "a", "als")
			if tc.existing != 0 {
				if err := os.MkdirAll(root, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(root, 0, tc.gid); err != nil && os.Geteuid() == 0 {
					t.Fatal(err)
				}
				if err := os.Chmod(root, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			log, hook := logtest.NewNullLogger()
			if err := PrepareRoot(root, tc.access, logrus.NewEntry(log)); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(root)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.wantMode || fi.Sys().(*syscall.Stat_t).Gid != tc.wantGID {
				t.Errorf("mode %v gid %d, want %v gid %d", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, tc.wantMode, tc.wantGID)
			}
			if warned := len(hook.AllEntries()) > 0; warned != tc.warns {
				t.Errorf("warned %v (%v), want %v", warned, hook.AllEntries(), tc.warns)
			}
			if tc.existing == 0 {
				if fi, _ := os.Stat(filepath.Dir(root)); fi.Mode().Perm() != 0o755 {
					t.Errorf("ROOT's parent created %v, want 0755", fi.Mode().Perm())
				}
			}
		})
	}
}

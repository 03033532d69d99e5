package layer

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

// FuzzDecodeTOCMatchesEncodingJSON holds decodeTOC to encoding/json: for
// any input both fail, or both succeed with the same TOC.
func FuzzDecodeTOCMatchesEncodingJSON(f *testing.F) {
	for _, s := range hostileTOCSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"version":1,"entries":[]}`,
		`{"VERSION":1,"Entries":[{"NAME":"a","Type":"reg"}]}`,               // v1 matches names case-insensitively
		`{"version":1,"version":2,"entries":[{"name":"a","name":"b"}]}`,     // and takes the last of duplicates
		`{"version":1,"entries":[{"name":"\xff\xfe","type":"dir"}]}`,        // invalid UTF-8
		`{"version":1,"entries":[{"name":"a","type":"reg","size":1e3}]}`,    // a float for an int
		`{"version":1,"entries":[{"name":"a","xattrs":{"user.x":"aGk="}}]}`, // base64 []byte
		`{"version":1,"entries":[{"name":"a","xattrs":{"user.x":"not base64"}}]}`,
		`{"version":1,"entries":[null,{"name":"a"}],"extra":{"x":[1,2]}}`,
		`{"version":"1"}`,
		`[1,2]`,
		`{"version":1} trailing`,
		``,
	} {
		f.Add([]byte(s))
	}
	data, _ := fstest.EStargz(f, fstest.SampleTar(f))
	if raw, err := readTOC(f.Context(), fstest.NewMemBlob(data), "", options{}); err == nil {
		f.Add(memberJSON(f, raw.member))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gotErr := decodeTOC(b)
		if errors.Is(gotErr, errTwoEntryLists) {
			t.Skip("refused on purpose: encoding/json merges the lists")
		}
		want := new(estargz.JTOC)
		wantErr := json.Unmarshal(b, want)
		switch {
		case (gotErr == nil) != (wantErr == nil):
			t.Fatalf("decodeTOC error %v, encoding/json error %v", gotErr, wantErr)
		case gotErr == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("decodeTOC and encoding/json disagree:\n%+v\n%+v", got, want)
		}
	})
}

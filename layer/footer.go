package layer

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// legacyFooterSize is the footer of pre-eStargz stargz blobs (CRFS), which
// some registries still serve; estargz keeps the constant unexported.
const legacyFooterSize = 47

// footerMagic ends the footer's gzip Extra subfield after the 16 hex digits
// of the TOC offset.
const footerMagic = "STARGZ"

// parseFooter finds the TOC offset in the footer at the end of tail (the
// last bytes of the blob). It parses the gzip Extra field itself instead of
// calling estargz's ParseFooter, which slices the subfield without checking
// its length and so can panic on a crafted footer.
func parseFooter(tail []byte) (tocOffset, footerSize int64, err error) {
	var errs []error
	if len(tail) >= estargz.FooterSize {
		off, err := parseFooterExtra(tail[len(tail)-estargz.FooterSize:], false)
		if err == nil {
			return off, estargz.FooterSize, nil
		}
		errs = append(errs, fmt.Errorf("estargz footer: %w", err))
	}
	if len(tail) >= legacyFooterSize {
		off, err := parseFooterExtra(tail[len(tail)-legacyFooterSize:], true)
		if err == nil {
			return off, legacyFooterSize, nil
		}
		errs = append(errs, fmt.Errorf("legacy stargz footer: %w", err))
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("blob of %d bytes is shorter than any footer", len(tail)))
	}
	return 0, 0, errors.Join(errs...)
}

// parseFooterExtra reads the offset out of one footer candidate: an empty
// gzip member whose Extra field is either the subfield 'S','G',len=22,
// "%016xSTARGZ" (eStargz) or the bare 22 bytes (legacy stargz).
func parseFooterExtra(p []byte, legacy bool) (int64, error) {
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return 0, fmt.Errorf("reading footer gzip header: %w", err)
	}
	extra := zr.Extra
	const fieldLen = 16 + len(footerMagic)
	if !legacy {
		if len(extra) != 4+fieldLen {
			return 0, fmt.Errorf("extra field of %d bytes, want %d", len(extra), 4+fieldLen)
		}
		if extra[0] != 'S' || extra[1] != 'G' {
			return 0, fmt.Errorf("extra subfield id %q, want \"SG\"", extra[:2])
		}
		if n := int(binary.LittleEndian.Uint16(extra[2:4])); n != fieldLen {
			return 0, fmt.Errorf("extra subfield length %d, want %d", n, fieldLen)
		}
		extra = extra[4:]
	}
	if len(extra) != fieldLen {
		return 0, fmt.Errorf("extra field of %d bytes, want %d", len(extra), fieldLen)
	}
	if string(extra[16:]) != footerMagic {
		return 0, errors.New("no STARGZ magic in footer")
	}
	off, err := strconv.ParseInt(string(extra[:16]), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing TOC offset: %w", err)
	}
	return off, nil
}

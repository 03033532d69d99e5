package layer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The part of an ELF file the dynamic loader reads before it maps the
// libraries: the header, the program headers, the interpreter's name and
// the dynamic segment's DT_NEEDED, DT_RUNPATH and DT_RPATH strings. Only
// that is parsed (not the section headers, which sit at the file's end
// where the loader never looks, and whose chunk would cost a fetch of its
// own), from a file in a layer anyone may have built: every size and
// offset is checked against the file and capped before anything is read
// or allocated.

const (
	elfMaxPhnum   = 256       // program headers read (real files have about a dozen)
	elfMaxDynamic = 64 << 10  // bytes of the dynamic segment read (DT_NEEDED entries come first)
	elfMaxNeeded  = 64        // DT_NEEDED names kept
	elfMaxName    = 4096      // longest interpreter, library or search path name (PATH_MAX)
	elfStringStep = 256       // a string is read this much at a time until its NUL
	elfMaxStrings = 256 << 10 // bytes read for strings in all
)

// errNotELF says a file is not an ELF executable or shared object this
// parser understands; the caller ignores it.
var errNotELF = errors.New("not an ELF executable or shared object")

// elfInfo is what the loader needs to find an ELF file's dependencies.
type elfInfo struct {
	class   byte   // 1: 32-bit, 2: 64-bit
	machine uint16 // e_machine
	interp  string // PT_INTERP ("" if none)
	needed  []string
	runpath []string // DT_RUNPATH, split at ':'
	rpath   []string // DT_RPATH (the loader ignores it when DT_RUNPATH is there)
}

// elfReadFunc returns n bytes of the file at off, or fewer if the file ends
// first, or fewer when only a prefix is at hand and more is not needed yet
// (short reads are allowed; callers needing exact lengths loop).
type elfReadFunc func(off int64, n int) ([]byte, error)

type elfSeg struct {
	typ                uint32
	off, vaddr, filesz uint64
}

const (
	ptLoad    = 1
	ptDynamic = 2
	ptInterp  = 3

	dtNull    = 0
	dtNeeded  = 1
	dtStrtab  = 5
	dtStrsz   = 10
	dtRpath   = 15
	dtRunpath = 29
)

// elfParser reads one ELF file through read, which bounds nothing itself.
type elfParser struct {
	size      int64
	read      elfReadFunc
	bo        binary.ByteOrder
	class     byte
	machine   uint16
	segs      []elfSeg
	strBudget int
}

// readExact reads exactly n bytes at off or fails.
func (p *elfParser) readExact(off uint64, n int) ([]byte, error) {
	if n < 0 || off > uint64(p.size) || uint64(n) > uint64(p.size)-off {
		return nil, fmt.Errorf("range [%d, +%d) outside the %d-byte file: %w", off, n, p.size, errNotELF)
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		b, err := p.read(int64(off)+int64(len(out)), n-len(out))
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("file ended at %d: %w", int64(off)+int64(len(out)), errNotELF)
		}
		out = append(out, b[:min(len(b), n-len(out))]...)
	}
	return out, nil
}

// parseELFHeaders reads the ELF header and program headers: enough for
// the interpreter, which the loader maps before anything else.
func parseELFHeaders(size int64, read elfReadFunc) (*elfParser, *elfInfo, error) {
	p := &elfParser{size: size, read: read, strBudget: elfMaxStrings}
	if size < 52 {
		return nil, nil, errNotELF
	}
	hdr, err := p.readExact(0, int(min(size, 64)))
	if err != nil {
		return nil, nil, err
	}
	if !bytes.HasPrefix(hdr, []byte("\x7fELF")) {
		return nil, nil, errNotELF
	}
	switch hdr[5] {
	case 1:
		p.bo = binary.LittleEndian
	case 2:
		p.bo = binary.BigEndian
	default:
		return nil, nil, errNotELF
	}
	if typ := p.bo.Uint16(hdr[16:]); typ != 2 && typ != 3 { // ET_EXEC, ET_DYN
		return nil, nil, errNotELF
	}
	p.class, p.machine = hdr[4], p.bo.Uint16(hdr[18:])
	var phoff uint64
	var phentsize, phnum uint16
	var want uint16
	switch p.class {
	case 1:
		phoff, phentsize, phnum, want = uint64(p.bo.Uint32(hdr[28:])), p.bo.Uint16(hdr[42:]), p.bo.Uint16(hdr[44:]), 32
	case 2:
		if len(hdr) < 64 {
			return nil, nil, errNotELF
		}
		phoff, phentsize, phnum, want = p.bo.Uint64(hdr[32:]), p.bo.Uint16(hdr[54:]), p.bo.Uint16(hdr[56:]), 56
	default:
		return nil, nil, errNotELF
	}
	if phentsize != want || phnum == 0 || phnum > elfMaxPhnum {
		return nil, nil, fmt.Errorf("%d program headers of %d bytes: %w", phnum, phentsize, errNotELF)
	}
	ph, err := p.readExact(phoff, int(phnum)*int(phentsize))
	if err != nil {
		return nil, nil, err
	}
	info := &elfInfo{class: p.class, machine: p.machine}
	for i := range int(phnum) {
		b := ph[i*int(phentsize):]
		var s elfSeg
		s.typ = p.bo.Uint32(b)
		if p.class == 1 {
			s.off, s.vaddr, s.filesz = uint64(p.bo.Uint32(b[4:])), uint64(p.bo.Uint32(b[8:])), uint64(p.bo.Uint32(b[16:]))
		} else {
			s.off, s.vaddr, s.filesz = p.bo.Uint64(b[8:]), p.bo.Uint64(b[16:]), p.bo.Uint64(b[32:])
		}
		p.segs = append(p.segs, s)
	}
	for _, s := range p.segs {
		if s.typ == ptInterp && info.interp == "" {
			if s.filesz == 0 || s.filesz > elfMaxName {
				continue
			}
			b, err := p.readExact(s.off, int(s.filesz))
			if err != nil {
				return nil, nil, err
			}
			info.interp, _, _ = strings.Cut(string(b), "\x00")
		}
	}
	return p, info, nil
}

// parseDynamic fills info's needed libraries and search paths from the
// dynamic segment, if there is one.
func (p *elfParser) parseDynamic(info *elfInfo) error {
	var dyn *elfSeg
	for i := range p.segs {
		if p.segs[i].typ == ptDynamic {
			dyn = &p.segs[i]
			break
		}
	}
	if dyn == nil {
		return nil // static
	}
	ent := 16
	if p.class == 1 {
		ent = 8
	}
	n := min(dyn.filesz, elfMaxDynamic)
	n -= n % uint64(ent)
	d, err := p.readExact(dyn.off, int(n))
	if err != nil {
		return err
	}
	var needed []uint64
	var strtab, strsz, runpath, rpath uint64
	var hasStrtab, hasRunpath, hasRpath bool
	for i := 0; i+ent <= len(d); i += ent {
		var tag, val uint64
		if p.class == 1 {
			tag, val = uint64(p.bo.Uint32(d[i:])), uint64(p.bo.Uint32(d[i+4:]))
		} else {
			tag, val = p.bo.Uint64(d[i:]), p.bo.Uint64(d[i+8:])
		}
		if tag == dtNull {
			break
		}
		switch tag {
		case dtNeeded:
			if len(needed) < elfMaxNeeded {
				needed = append(needed, val)
			}
		case dtStrtab:
			strtab, hasStrtab = val, true
		case dtStrsz:
			strsz = val
		case dtRunpath:
			runpath, hasRunpath = val, true
		case dtRpath:
			rpath, hasRpath = val, true
		}
	}
	if !hasStrtab {
		return nil
	}
	// DT_STRTAB is an address: the loaded segment holding it says where
	// it is in the file.
	stroff, ok := uint64(0), false
	for _, s := range p.segs {
		if s.typ == ptLoad && strtab >= s.vaddr && strtab-s.vaddr < s.filesz {
			stroff, ok = s.off+(strtab-s.vaddr), true
			break
		}
	}
	if !ok {
		return fmt.Errorf("string table at address %#x is in no loaded segment: %w", strtab, errNotELF)
	}
	str := func(o uint64) (string, error) { return p.str(stroff, strsz, o) }
	for _, o := range needed {
		s, err := str(o)
		if err != nil {
			return err
		}
		if s != "" {
			info.needed = append(info.needed, s)
		}
	}
	for _, f := range []struct {
		has bool
		off uint64
		to  *[]string
	}{{hasRunpath, runpath, &info.runpath}, {hasRpath, rpath, &info.rpath}} {
		if !f.has {
			continue
		}
		s, err := str(f.off)
		if err != nil {
			return err
		}
		for _, dir := range strings.Split(s, ":") {
			if dir != "" {
				*f.to = append(*f.to, dir)
			}
		}
	}
	return nil
}

// str reads the NUL-terminated string at offset o of the string table at
// file offset stroff (of strsz bytes, 0: unknown), a step at a time so no
// more of the file is asked for than the string needs. A string longer
// than elfMaxName, or running off the table or the file, fails.
func (p *elfParser) str(stroff, strsz, o uint64) (string, error) {
	if strsz > 0 && o >= strsz {
		return "", fmt.Errorf("string at %d past the %d-byte string table: %w", o, strsz, errNotELF)
	}
	start := stroff + o
	if start < stroff || start >= uint64(p.size) {
		return "", fmt.Errorf("string at %d outside the file: %w", o, errNotELF)
	}
	limit := uint64(p.size) - start
	if strsz > 0 {
		limit = min(limit, strsz-o)
	}
	limit = min(limit, elfMaxName)
	var out []byte
	for uint64(len(out)) < limit {
		if p.strBudget <= 0 {
			return "", fmt.Errorf("strings take more than %d bytes: %w", elfMaxStrings, errNotELF)
		}
		n := int(min(limit-uint64(len(out)), elfStringStep))
		b, err := p.read(int64(start)+int64(len(out)), n)
		if err != nil {
			return "", err
		}
		if len(b) == 0 {
			break
		}
		b = b[:min(len(b), n)]
		p.strBudget -= len(b)
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return string(append(out, b[:i]...)), nil
		}
		out = append(out, b...)
	}
	return "", fmt.Errorf("string at %d has no end within %d bytes: %w", o, limit, errNotELF)
}

// parseELF reads everything parseELFHeaders and parseDynamic do, in one
// call (for tests and the fuzzer).
func parseELF(size int64, read elfReadFunc) (*elfInfo, error) {
	p, info, err := parseELFHeaders(size, read)
	if err != nil {
		return nil, err
	}
	if err := p.parseDynamic(info); err != nil {
		return nil, err
	}
	return info, nil
}

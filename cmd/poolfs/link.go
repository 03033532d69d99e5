package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/poolfs/poolfs/alspath"
)

// link is the client side of grammar 1, what the unmerged storage patch
// would have done: stat <ROOT>/.pool/<annotations>/rootfs.<ID> (which makes
// the daemon resolve the layer) and link <ROOT>/<ID> to it.
func link(ctx context.Context, args []string, stdout io.Writer) error {
	fl := flag.NewFlagSet("link", flag.ContinueOnError)
	ref := fl.String("ref", "", "image `REFERENCE` that contains the layer")
	dg := fl.String("digest", "", "layer blob `DIGEST` in that image's manifest")
	id := fl.String("id", "", "layer `ID` to link as ROOT/<ID> (default: the digest's hex)")
	var extra listFlag
	fl.Var(&extra, "annotation", "extra layer annotation `k=v` (repeatable), e.g. the TOC digest")
	fl.Usage = func() {
		fmt.Fprint(fl.Output(), "Usage: poolfs link ROOT --ref REF --digest DIGEST [--annotation k=v]... [--id ID]\n\nFlags:\n")
		fl.PrintDefaults()
	}
	pos, err := parseInterspersed(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fl.Usage()
		return fmt.Errorf("want exactly one ROOT, got %d arguments", len(pos))
	}
	if *ref == "" || *dg == "" {
		return errors.New("--ref and --digest are required")
	}
	if _, err := alspath.ParseRef(*ref); err != nil {
		return fmt.Errorf("--ref: %w", err)
	}
	d, err := alspath.ParseDigest(*dg)
	if err != nil {
		return fmt.Errorf("--digest: %w", err)
	}
	if *id == "" {
		*id = d.Encoded()
	}
	if _, err := alspath.ParseLayerID(alspath.RootfsPrefix + *id); err != nil || strings.Contains(*id, "/") {
		return fmt.Errorf("--id %q is not a usable layer ID", *id)
	}
	root, err := filepath.Abs(pos[0])
	if err != nil {
		return fmt.Errorf("resolving ROOT %s: %w", pos[0], err)
	}

	elems := []string{
		encodeAnnotation(alspath.RefAnnotation, *ref),
		encodeAnnotation(alspath.LayerAnnotation, d.String()),
	}
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("--annotation %q is not k=v", kv)
		}
		elems = append(elems, encodeAnnotation(k, v))
	}
	target := filepath.Join(append(append([]string{root, alspath.MountDir}, elems...), alspath.RootfsPrefix+*id)...)
	st, err := os.Stat(target)
	if err != nil {
		return fmt.Errorf("layer %s of %s cannot be served from the pool at %s (in no lazily served format, not in the image, or the registry is unreachable: the daemon's log says which): %w",
			d, *ref, filepath.Join(root, alspath.MountDir), err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", target)
	}

	linkPath := filepath.Join(root, *id)
	if cur, err := os.Readlink(linkPath); err == nil {
		if cur == target {
			fmt.Fprintln(stdout, linkPath)
			return nil
		}
		return fmt.Errorf("%s already links to %s", linkPath, cur)
	}
	if err := os.Symlink(target, linkPath); err != nil {
		return fmt.Errorf("linking %s: %w", linkPath, err)
	}
	fmt.Fprintln(stdout, linkPath)
	return nil
}

// encodeAnnotation uses the URL-safe alphabet: standard base64 can contain
// '/', which would split the element into two path components.
func encodeAnnotation(k, v string) string {
	return base64.URLEncoding.EncodeToString([]byte(k + "=" + v))
}

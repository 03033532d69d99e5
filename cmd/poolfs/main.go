// Command poolfs serves eStargz and zstd:chunked layers of registry images as an additional
// layer store for podman and other containers/storage users.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

const usage = `poolfs: lazily pulled eStargz and zstd:chunked layers as a podman additional layer store

Usage:
  poolfs serve [flags] ROOT      mount the store at ROOT/.pool and serve until SIGINT/SIGTERM
  poolfs link ROOT --ref REF --digest DIGEST [--annotation k=v]... [--id ID]
                                 look a layer up through the pool and link ROOT/<ID> to it
  poolfs optimize SRC DST -- CMD...
                                 push SRC as eStargz to DST with the files CMD opens first
  poolfs image add|rm|ls|sync IMAGE...
                                 keep images in the image store at ROOT/images, which podman
                                 runs without pulling (additionalimagestores in storage.conf)
  poolfs status [--json]         show the running daemon's layers and cache
  poolfs gc [--keep SIZE]        trim the running daemon's disk cache now
  poolfs profile export IMAGE FILE
                                 write the running daemon's startup profiles of IMAGE's layers to FILE
  poolfs profile import FILE     hand the profiles in FILE to the running daemon
  poolfs profile push IMAGE      publish the running daemon's profiles of IMAGE's layers to its
                                 registry (an OCI artifact referring to the image manifest)
  poolfs auth-helper             hand credentials from podman (JSON on stdin) to the daemon;
                                 name it in registries.conf as additional-layer-store-auth-helper

Run "poolfs COMMAND -h" for a command's flags.
`

func main() {
	if filepath.Base(os.Args[0]) == "poolfs-auth-helper" {
		// podman runs the helper registries.conf names with no arguments:
		// a symlink by this name is "poolfs auth-helper".
		os.Args = append([]string{os.Args[0], "auth-helper"}, os.Args[1:]...)
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "link":
		err = link(ctx, os.Args[2:], os.Stdout)
	case "optimize":
		err = optimize(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "image":
		err = image(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "status":
		err = status(ctx, os.Args[2:], os.Stdout)
	case "gc":
		err = gc(ctx, os.Args[2:], os.Stdout)
	case "profile":
		err = profileCmd(ctx, os.Args[2:], os.Stdout)
	case "auth-helper":
		err = authHelper(ctx, os.Args[2:], os.Stdin, os.Stdout)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "poolfs: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "poolfs %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// parseInterspersed parses flags that may come before or after the
// positional arguments ("link ROOT --ref ..."), which package flag alone
// does not allow.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

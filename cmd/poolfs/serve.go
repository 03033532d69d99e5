package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/cache"
	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/internal/mountpoint"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/remote"
)

// poolDir is where, under the ALS root, the store is mounted; the storage
// configuration names "<ROOT>/.pool:ref".
const poolDir = ".pool"

func serve(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	var insecure listFlag
	fl.Var(&insecure, "insecure-registry", "registry `HOST[:PORT]` reached over plain HTTP (repeatable; loopback registries always are)")
	cacheDir := fl.String("cache-dir", "/var/lib/poolfs/cache", "`DIR` for the on-disk chunk cache")
	memCache := fl.Int64("memory-cache-mb", 512, "`MiB` of verified chunks kept in memory")
	logLevel := fl.String("log-level", "info", "log `LEVEL`: debug, info, warn, error")
	logFormat := fl.String("log-format", "text", "log `FORMAT`: text or json")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "Usage: poolfs serve [flags] ROOT\n\nMounts the additional layer store at ROOT/%s.\n\nFlags:\n", poolDir)
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
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}

	root, err := filepath.Abs(pos[0])
	if err != nil {
		return fmt.Errorf("resolving ROOT %s: %w", pos[0], err)
	}
	mnt := filepath.Join(root, poolDir)
	if err := mountpoint.Prepare(mnt); err != nil {
		return err
	}

	disk, err := cache.NewDisk(filepath.Join(*cacheDir, "chunks"), log.WithField("component", "cache"))
	if err != nil {
		return fmt.Errorf("opening cache in %s: %w", *cacheDir, err)
	}
	chunks := cache.NewTiered(cache.NewMemory(*memCache<<20), disk)
	resolver := remote.New(remote.Options{Insecure: insecure, Log: log.WithField("component", "remote")})
	p := pool.New(resolver, chunks, log.WithField("component", "pool"))

	server, err := layerfs.Mount(mnt, pool.NewRoot(p), layerfs.Options())
	if err != nil {
		return fmt.Errorf("mounting %s: %w", mnt, err)
	}
	log.WithFields(logrus.Fields{"path": mnt, "cache_dir": *cacheDir}).Info("serving")

	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-done:
		// Unmounted from outside (umount, fusermount -u).
		log.WithField("path", mnt).Info("unmounted externally")
		return nil
	case <-ctx.Done():
	}
	log.WithField("path", mnt).Info("signal received, unmounting")
	if err := unmount(server, mnt); err != nil {
		return err
	}
	<-done
	return nil
}

// unmount detaches the mount, retrying while the kernel says it is busy and
// falling back to a lazy detach so that no dead mount is left behind.
func unmount(server interface{ Unmount() error }, mnt string) error {
	var err error
	for range 10 {
		if err = server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := lazyUnmount(mnt); lerr != nil {
		return fmt.Errorf("unmounting %s: %w (lazy detach: %v)", mnt, err, lerr)
	}
	return nil
}

func newLogger(level, format string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	l.SetLevel(lv)
	switch format {
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, fmt.Errorf("--log-format: %q is neither text nor json", format)
	}
	return logrus.NewEntry(l), nil
}

package main

import "golang.org/x/sys/unix"

func lazyUnmount(dir string) error { return unix.Unmount(dir, unix.MNT_DETACH) }

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/poolfs/poolfs/config"
	"github.com/poolfs/poolfs/control"
)

// clientTimeout bounds one exchange with the daemon.
const clientTimeout = 30 * time.Second

func socketFlag(fl *flag.FlagSet) *string {
	return fl.String("socket", "", "the daemon's control socket `PATH` (default $"+control.SocketEnv+", else control_socket in "+config.DefaultPath+", else "+control.DefaultSocket+")")
}

// clientFor connects to the socket named by --socket, $POOLFS_CONTROL_SOCKET,
// the default config file's control_socket (the daemon reads that file
// too), or the default path, in that order.
func clientFor(sock string) *control.Client {
	if sock == "" && os.Getenv(control.SocketEnv) == "" {
		if f, err := config.Load(config.DefaultPath, false); err == nil && f.ControlSocket != nil {
			sock = *f.ControlSocket
		}
	}
	return control.NewClient(sock)
}

// status prints the running daemon's layers and cache.
func status(ctx context.Context, args []string, out io.Writer) error {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	sock := socketFlag(fl)
	asJSON := fl.Bool("json", false, "print JSON (control.Status) instead of a table")
	if err := fl.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	st, err := clientFor(*sock).Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(out, st)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tDIGEST\tSIZE\tFETCHED\tUSERS\tLAST ACCESS\tTREE\tPROFILE")
	for _, l := range st.Layers {
		tree := "not in memory"
		if l.TreeLoaded {
			tree = fmt.Sprintf("%d entries, %s", l.TreeEntries, humanBytes(l.TreeBytes))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f%%\t%d\t%s\t%s\t%s\n", l.Ref, shortDigest(l.Digest), humanBytes(l.Size),
			100*l.Fetched, l.Uses, l.LastAccess.Local().Format(time.DateTime), tree, profileSummary(l.Profile))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	cap := "no cap"
	if st.Cache.MaxBytes > 0 {
		cap = "cap " + humanBytes(st.Cache.MaxBytes)
	}
	where := st.Mountpoint
	if st.TreesMountpoint != "" {
		where += " (trees on " + st.TreesMountpoint + ")"
	}
	limit := "no limit"
	if st.Trees.MaxBytes > 0 {
		limit = "limit " + humanBytes(st.Trees.MaxBytes)
	}
	_, err = fmt.Fprintf(out, "\n%d layers served from %s\ntrees in memory: %d, %s (%s)\ndisk cache %s: %s (%s), %d evictions, %s waiting to be written; memory cache %s\nwhole-file copies for passthrough: %d, %s (in the disk cache)\n",
		len(st.Layers), where, st.Trees.Loaded, humanBytes(st.Trees.Bytes), limit, st.Cache.Dir, humanBytes(st.Cache.Bytes), cap, st.Cache.Evictions, humanBytes(st.Cache.PendingBytes), humanBytes(st.Cache.MemoryBytes),
		st.Cache.WholeFiles, humanBytes(st.Cache.WholeBytes))
	return err
}

// gc trims the daemon's disk cache now.
func gc(ctx context.Context, args []string, out io.Writer) error {
	fl := flag.NewFlagSet("gc", flag.ContinueOnError)
	sock := socketFlag(fl)
	keep := config.Size{}
	fl.Var(&keep, "keep", "trim the disk cache down to `SIZE` (e.g. 1GiB; default 0: empty it); the cap is unchanged")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if keep.Percent > 0 {
		return errors.New("--keep: give a size, not a percentage")
	}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	res, err := clientFor(*sock).GC(ctx, keep.Bytes)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "freed %s; disk cache now %s\n", humanBytes(res.FreedBytes), humanBytes(res.Cache.Bytes))
	return err
}

// authHelper implements containers/storage's additional-layer-store auth
// helper: podman runs it at each pull with {"<image ref>": {"username",
// "password", "identityToken"}} on stdin, and it hands that to the daemon.
// Nothing it reads is ever printed.
func authHelper(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fl := flag.NewFlagSet("auth-helper", flag.ContinueOnError)
	sock := socketFlag(fl)
	if err := fl.Parse(args); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(in, 1<<20))
	if err != nil {
		return fmt.Errorf("reading credentials from stdin: %w", err)
	}
	var creds map[string]control.Credentials
	if err := json.Unmarshal(data, &creds); err != nil {
		// Not the decoder's message: it could quote part of a secret.
		return errors.New(`stdin is not {"<image ref>": {"username": ..., "password": ..., "identityToken": ...}}`)
	}
	if len(creds) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	_, err = clientFor(*sock).SetCredentials(ctx, creds)
	return err
}

// profileSummary is a layer's profile in a few words: "recorded 312",
// "loaded 300 from store, 280 used", "published".
func profileSummary(p *control.ProfileStatus) string {
	if p == nil {
		return "-"
	}
	var parts []string
	if p.Recorded > 0 {
		parts = append(parts, fmt.Sprintf("recorded %d", p.Recorded))
	}
	if p.Loaded {
		parts = append(parts, fmt.Sprintf("loaded %d from %s (%d fetched), %d used", p.Chunks, p.Source, p.Fetched, p.Used))
	}
	if p.Published {
		parts = append(parts, "published")
	}
	return strings.Join(parts, "; ")
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeJSON prints v as the --json output of a client command.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

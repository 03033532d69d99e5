package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/imagestore"
	"github.com/poolfs/poolfs/internal/progress"
)

const imageUsage = `Usage:
  poolfs image add IMAGE...   resolve each image and put it in the image store (ROOT/images)
  poolfs image rm IMAGE...    take names (or images, by ID) out of the image store
  poolfs image ls [--json]    list the image store
  poolfs image sync           resolve the store's tags again; a moved tag gets its new image

Every image's layers must be eStargz or zstd:chunked. Flags: --socket PATH (the daemon's control socket).
`

// imageAddTimeout bounds one `image add` or `image sync`: resolving a big
// image's layers takes a TOC fetch per layer.
const imageAddTimeout = 10 * time.Minute

// image drives the running daemon's image store.
func image(ctx context.Context, args []string, out, errOut io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(errOut, imageUsage)
		return errors.New("missing subcommand")
	}
	sub := args[0]
	fl := flag.NewFlagSet("image "+sub, flag.ContinueOnError)
	fl.Usage = func() { fmt.Fprint(fl.Output(), imageUsage) }
	sock := socketFlag(fl)
	asJSON := fl.Bool("json", false, "ls: print JSON (control.ImageStatus list)")
	pos, err := parseInterspersed(fl, args[1:])
	if err != nil {
		return err
	}
	c := clientFor(*sock)
	switch sub {
	case "add":
		if len(pos) == 0 {
			return errors.New("image add: name at least one IMAGE")
		}
		ctx, cancel := context.WithTimeout(ctx, imageAddTimeout)
		defer cancel()
		p := progressFor(errOut)
		added, err := c.AddImages(ctx, pos, showResolved(p))
		p.Done()
		for _, im := range added {
			fmt.Fprintf(out, "%s %s\n", im.ID, strings.Join(im.Names, " "))
		}
		return err
	case "rm":
		if len(pos) == 0 {
			return errors.New("image rm: name at least one IMAGE")
		}
		ctx, cancel := context.WithTimeout(ctx, clientTimeout)
		defer cancel()
		gone, err := c.RemoveImages(ctx, pos)
		for _, im := range gone {
			fmt.Fprintf(out, "%s %s\n", im.ID, strings.Join(im.Names, " "))
		}
		return err
	case "ls":
		ctx, cancel := context.WithTimeout(ctx, clientTimeout)
		defer cancel()
		ims, err := c.Images(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(out, ims)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IMAGE ID\tNAMES\tLAYERS\tSIZE\tDIGEST")
		for _, im := range ims {
			names := strings.Join(im.Names, ",")
			if names == "" {
				names = "<none>"
			}
			fmt.Fprintf(tw, "%.12s\t%s\t%d\t%s\t%s\n", im.ID, names, im.Layers, humanBytes(im.Size), im.Digest)
		}
		return tw.Flush()
	case "sync":
		ctx, cancel := context.WithTimeout(ctx, imageAddTimeout)
		defer cancel()
		p := progressFor(errOut)
		synced, err := c.SyncImages(ctx, showResolved(p))
		p.Done()
		for _, s := range synced {
			switch {
			case s.Error != "":
				fmt.Fprintf(out, "%s: %s\n", s.Name, s.Error)
			case s.From != s.To:
				fmt.Fprintf(out, "%s: %s -> %s\n", s.Name, s.From, s.To)
			default:
				fmt.Fprintf(out, "%s: unchanged\n", s.Name)
			}
		}
		return err
	case "-h", "--help", "help":
		fmt.Fprint(out, imageUsage)
		return nil
	}
	fmt.Fprint(errOut, imageUsage)
	return fmt.Errorf("unknown subcommand %q", sub)
}

// showResolved puts "REF: layers resolved N/M" on l's status line.
func showResolved(l *progress.Line) func(control.ImageProgress) {
	return func(pr control.ImageProgress) { l.Show("%s: layers resolved %d/%d", pr.Ref, pr.Resolved, pr.Total) }
}

// The control socket's image requests, on the daemon's image store.

func (s *daemonState) AddImage(ctx context.Context, ref string, progress func(control.ImageProgress)) (control.ImageStatus, error) {
	im, err := s.images.Add(ctx, ref, func(p imagestore.Progress) { progress(control.ImageProgress(p)) })
	return imageStatus(im), err
}

func (s *daemonState) RemoveImages(ctx context.Context, refs []string) ([]control.ImageStatus, error) {
	gone, err := s.images.Remove(ctx, refs)
	return imageStatuses(gone), err
}

func (s *daemonState) Images() []control.ImageStatus { return imageStatuses(s.images.List()) }

func (s *daemonState) SyncImages(ctx context.Context, progress func(control.ImageProgress)) ([]control.ImageSync, error) {
	res, err := s.images.Sync(ctx, func(p imagestore.Progress) { progress(control.ImageProgress(p)) })
	out := make([]control.ImageSync, 0, len(res))
	for _, r := range res {
		out = append(out, control.ImageSync{Name: r.Name, From: r.From.String(), To: r.To.String(), Error: r.Err})
	}
	return out, err
}

func imageStatus(im imagestore.Image) control.ImageStatus {
	return control.ImageStatus{ID: im.ID, Names: im.Names, Digested: im.Digested, Digest: im.Digest.String(),
		Layers: im.Layers, Size: im.Size, Created: im.Created}
}

func imageStatuses(ims []imagestore.Image) []control.ImageStatus {
	out := make([]control.ImageStatus, 0, len(ims))
	for _, im := range ims {
		out = append(out, imageStatus(im))
	}
	return out
}

// progressFor is the progress line of a command's error output: a status
// line if it is a terminal, plain lines otherwise.
func progressFor(w io.Writer) *progress.Line {
	if f, ok := w.(*os.File); ok {
		return progress.For(f)
	}
	return progress.New(w, 0, nil)
}

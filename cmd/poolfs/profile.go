package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/poolfs/poolfs/profile"
)

const profileUsage = `usage: poolfs profile export [--socket PATH] IMAGE FILE
       poolfs profile import [--socket PATH] FILE
       poolfs profile push [--socket PATH] IMAGE`

// profileCmd moves startup profiles between the running daemon and files
// (FILE "-": stdout or stdin), for sites without a shared registry.
func profileCmd(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New(profileUsage)
	}
	fl := flag.NewFlagSet("profile "+args[0], flag.ContinueOnError)
	sock := socketFlag(fl)
	pos, err := parseInterspersed(fl, args[1:])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	switch args[0] {
	case "export":
		if len(pos) != 2 {
			return errors.New(profileUsage)
		}
		b, err := clientFor(*sock).Profiles(ctx, pos[0])
		if err != nil {
			return err
		}
		set, err := profile.UnmarshalSet(b)
		if err != nil {
			return fmt.Errorf("the daemon's answer: %w", err)
		}
		if len(set.Profiles) == 0 {
			return fmt.Errorf("the daemon holds no profile for a layer of %s (it must have served the image, under that reference, since it started)", pos[0])
		}
		if pos[1] == "-" {
			_, err = out.Write(b)
		} else {
			err = os.WriteFile(pos[1], b, 0o644)
		}
		if err != nil {
			return fmt.Errorf("writing profiles: %w", err)
		}
		if pos[1] != "-" {
			_, err = fmt.Fprintf(out, "exported the profiles of %d layers of %s to %s\n", len(set.Profiles), pos[0], pos[1])
		}
		return err
	case "import":
		if len(pos) != 1 {
			return errors.New(profileUsage)
		}
		var b []byte
		if pos[0] == "-" {
			b, err = io.ReadAll(io.LimitReader(os.Stdin, profile.MaxEncoded+1))
		} else {
			b, err = readLimited(pos[0], profile.MaxEncoded)
		}
		if err != nil {
			return fmt.Errorf("reading profiles: %w", err)
		}
		if _, err := profile.UnmarshalSet(b); err != nil {
			return fmt.Errorf("%s: %w", pos[0], err)
		}
		res, err := clientFor(*sock).ImportProfiles(ctx, b)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "imported the profiles of %d layers\n", res.Layers)
		return err
	case "push":
		if len(pos) != 1 {
			return errors.New(profileUsage)
		}
		res, err := clientFor(*sock).PushProfiles(ctx, pos[0])
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "pushed the profiles of %d layers of %s to %s@%s (subject %s)\n",
			len(res.Layers), pos[0], res.Repository, res.Digest, res.Subject)
		return err
	default:
		return fmt.Errorf("unknown profile command %q\n%s", args[0], profileUsage)
	}
}

// readLimited reads the file at path, refusing one over limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return b, nil
}

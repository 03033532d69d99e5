package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/profile"
)

// Backend is what the control socket reports on and acts upon.
type Backend interface {
	Status() Status
	GC(keepBytes int64) GCResult
	// SetCredentials records credentials for ref's registry and returns
	// the registry's name.
	SetCredentials(ref string, c Credentials) (string, error)
}

// ErrNoProfiles says the daemon holds no profile for any layer of an image.
var ErrNoProfiles = errors.New("no profile recorded for the image's layers")

// ProfileBackend is a Backend that also hands out and takes startup
// profiles (GET and POST /profiles).
type ProfileBackend interface {
	// Profiles returns the profiles held for the layers of image ref.
	Profiles(ref string) profile.Set
	// ImportProfiles keeps s's profiles for their layers' next open and
	// says how many it kept.
	ImportProfiles(s profile.Set) (int, error)
	// PushProfiles publishes the profiles of ref's layers to ref's
	// registry. ErrNoProfiles (wrapped) says there are none to push.
	PushProfiles(ctx context.Context, ref string) (PushResult, error)
}

// maxRequest bounds request bodies: an auth-helper input is a few KiB.
const maxRequest = 1 << 20

// Server serves Backend on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	done chan error
}

// Listen creates the socket at path (its directory 0700 if it has to be
// made, the socket itself 0600) and serves b until Close. A stale socket
// left by a killed daemon is replaced; one a live daemon answers on is an
// error, so two daemons never fight over one socket.
func Listen(path string, b Backend, log *logrus.Entry) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another daemon is listening on it (set --control-socket)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale control socket: %w", err)
	}
	// The umask makes the socket 0600 from the start, with no window in
	// which another user could connect.
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on control socket: %w", err)
	}
	s := &Server{
		path: path,
		ln:   &peerCheck{Listener: ln, uid: os.Geteuid(), log: log},
		done: make(chan error, 1),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, b.Status())
	})
	mux.HandleFunc("POST /gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if err := decode(r, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res := b.GC(req.KeepBytes)
		log.WithFields(logrus.Fields{"keep_bytes": req.KeepBytes, "freed_bytes": res.FreedBytes}).Info("cache trimmed on request")
		writeJSON(w, res)
	})
	mux.HandleFunc("POST /credentials", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]Credentials
		if err := decode(r, &req); err != nil {
			// The decoder's message never quotes the input, so no secret
			// ends up in the answer or a log.
			http.Error(w, "credentials: not a JSON object of image references", http.StatusBadRequest)
			return
		}
		refs := make([]string, 0, len(req))
		for ref := range req {
			refs = append(refs, ref)
		}
		sort.Strings(refs)
		res := CredentialsResult{Registries: []string{}}
		for _, ref := range refs {
			reg, err := b.SetCredentials(ref, req[ref])
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			// Names only: the secret never reaches a log line.
			log.WithFields(logrus.Fields{"ref": ref, "registry": reg}).Info("credentials received from auth helper")
			res.Registries = append(res.Registries, reg)
		}
		writeJSON(w, res)
	})
	if pb, ok := b.(ProfileBackend); ok {
		handleProfiles(mux, pb, log)
	}
	handleImages(mux, b, log)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { s.done <- s.srv.Serve(s.ln) }()
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	_ = os.Remove(s.path)
	return err
}

func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	if err != nil {
		return fmt.Errorf("reading request: %w", err)
	}
	if len(body) > maxRequest {
		return errors.New("request too large")
	}
	if len(body) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errors.New("request is not the expected JSON")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// peerCheck refuses connections from other users than the daemon's own,
// whatever the socket's mode: the socket hands out credentials.
type peerCheck struct {
	net.Listener
	uid int
	log *logrus.Entry
}

func (l *peerCheck) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			continue
		}
		raw, err := uc.SyscallConn()
		if err != nil {
			c.Close()
			continue
		}
		var cred *unix.Ucred
		var cerr error
		_ = raw.Control(func(fd uintptr) {
			cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		})
		if cerr != nil || int(cred.Uid) != l.uid {
			uid := -1
			if cred != nil {
				uid = int(cred.Uid)
			}
			l.log.WithField("peer_uid", uid).Warn("control socket: refused a connection from another user")
			c.Close()
			continue
		}
		return c, nil
	}
}

func handleProfiles(mux *http.ServeMux, b ProfileBackend, log *logrus.Entry) {
	mux.HandleFunc("GET /profiles", func(w http.ResponseWriter, r *http.Request) {
		ref := r.URL.Query().Get("ref")
		if ref == "" {
			http.Error(w, "profiles: give ?ref=IMAGE", http.StatusBadRequest)
			return
		}
		out, err := profile.MarshalSet(b.Profiles(ref))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", profile.MediaType)
		_, _ = w.Write(out)
	})
	mux.HandleFunc("POST /profiles", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, profile.MaxEncoded+1))
		if err != nil {
			http.Error(w, "reading request: "+err.Error(), http.StatusBadRequest)
			return
		}
		set, err := profile.UnmarshalSet(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n, err := b.ImportProfiles(set)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		log.WithField("layers", n).Info("profiles imported on request")
		writeJSON(w, ImportResult{Layers: n})
	})
	mux.HandleFunc("POST /profiles/push", func(w http.ResponseWriter, r *http.Request) {
		var req PushRequest
		if err := decode(r, &req); err != nil || req.Ref == "" {
			http.Error(w, "profiles/push: want {\"ref\": IMAGE}", http.StatusBadRequest)
			return
		}
		res, err := b.PushProfiles(r.Context(), req.Ref)
		switch {
		case errors.Is(err, ErrNoProfiles):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			log.WithField("ref", req.Ref).WithError(err).Warn("pushing profiles failed")
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		log.WithFields(logrus.Fields{"ref": req.Ref, "repository": res.Repository, "subject": res.Subject, "digest": res.Digest, "layers": len(res.Layers)}).Info("profiles pushed")
		writeJSON(w, res)
	})
}

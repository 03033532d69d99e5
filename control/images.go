package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Image store requests (a daemon whose Backend is also an ImageBackend):
// GET /images (ImageStatus list), POST /images/add and POST /images/sync
// (ImagesRequest in; a stream of ImageEvent lines out, progress first),
// POST /images/rm (ImagesRequest in, ImagesResult out).

// ImageBackend is the daemon's image store.
type ImageBackend interface {
	AddImage(ctx context.Context, ref string, progress func(ImageProgress)) (ImageStatus, error)
	RemoveImages(ctx context.Context, refs []string) ([]ImageStatus, error)
	Images() []ImageStatus
	SyncImages(ctx context.Context, progress func(ImageProgress)) ([]ImageSync, error)
}

// ImageStatus is one image in the image store.
type ImageStatus struct {
	ID       string    `json:"id"`
	Names    []string  `json:"names"`
	Digested string    `json:"digested"` // repository@manifest digest
	Digest   string    `json:"digest"`   // manifest digest
	Layers   int       `json:"layers"`
	Size     int64     `json:"size"`
	Created  time.Time `json:"created"`
}

// ImageProgress says how many of an image's layers are looked up.
type ImageProgress struct {
	Ref      string `json:"ref"`
	Resolved int    `json:"resolved"`
	Total    int    `json:"total"`
}

// ImageSync is what `image sync` did for one tag.
type ImageSync struct {
	Name  string `json:"name"`
	From  string `json:"from"`
	To    string `json:"to"`
	Error string `json:"error,omitempty"`
}

// ImagesRequest names images.
type ImagesRequest struct {
	Refs []string `json:"refs"`
}

// ImagesResult lists the images a request changed.
type ImagesResult struct {
	Images []ImageStatus `json:"images"`
}

// ImageEvent is one line of an add or sync answer: exactly one field set.
type ImageEvent struct {
	Progress *ImageProgress `json:"progress,omitempty"`
	Added    *ImageStatus   `json:"added,omitempty"`
	Synced   []ImageSync    `json:"synced,omitempty"`
	Error    string         `json:"error,omitempty"`
}

func handleImages(mux *http.ServeMux, b Backend, log *logrus.Entry) {
	ib, ok := b.(ImageBackend)
	if !ok {
		mux.HandleFunc("/images/", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "this daemon serves no image store", http.StatusNotFound)
		})
		return
	}
	mux.HandleFunc("GET /images", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, ib.Images())
	})
	mux.HandleFunc("POST /images/rm", func(w http.ResponseWriter, r *http.Request) {
		var req ImagesRequest
		if err := decode(r, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		gone, err := ib.RemoveImages(r.Context(), req.Refs)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, ImagesResult{Images: gone})
	})
	mux.HandleFunc("POST /images/add", func(w http.ResponseWriter, r *http.Request) {
		var req ImagesRequest
		if err := decode(r, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		send := eventStream(w)
		for _, ref := range req.Refs {
			st, err := ib.AddImage(r.Context(), ref, func(p ImageProgress) { send(ImageEvent{Progress: &p}) })
			if err != nil {
				log.WithField("ref", ref).WithError(err).Warn("image add failed")
				send(ImageEvent{Error: err.Error()})
				return
			}
			send(ImageEvent{Added: &st})
		}
	})
	mux.HandleFunc("POST /images/sync", func(w http.ResponseWriter, r *http.Request) {
		send := eventStream(w)
		res, err := ib.SyncImages(r.Context(), func(p ImageProgress) { send(ImageEvent{Progress: &p}) })
		if res == nil {
			res = []ImageSync{}
		}
		send(ImageEvent{Synced: res})
		if err != nil {
			send(ImageEvent{Error: err.Error()})
		}
	})
}

// eventStream writes ImageEvent lines to w, each flushed at once so the
// client can show progress; safe for concurrent use.
func eventStream(w http.ResponseWriter) func(ImageEvent) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	fl, _ := w.(http.Flusher)
	return func(e ImageEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
		if fl != nil {
			fl.Flush()
		}
	}
}

// Images lists the image store.
func (c *Client) Images(ctx context.Context) ([]ImageStatus, error) {
	var out []ImageStatus
	err := c.do(ctx, http.MethodGet, "/images", nil, &out)
	return out, err
}

// RemoveImages takes refs out of the image store.
func (c *Client) RemoveImages(ctx context.Context, refs []string) ([]ImageStatus, error) {
	var out ImagesResult
	err := c.do(ctx, http.MethodPost, "/images/rm", ImagesRequest{Refs: refs}, &out)
	return out.Images, err
}

// AddImages adds refs to the image store, one after the other, calling
// progress (may be nil) as layers are looked up. It returns the images
// added before the first failure, and that failure.
func (c *Client) AddImages(ctx context.Context, refs []string, progress func(ImageProgress)) ([]ImageStatus, error) {
	var added []ImageStatus
	err := c.stream(ctx, "/images/add", ImagesRequest{Refs: refs}, func(e ImageEvent) {
		switch {
		case e.Progress != nil && progress != nil:
			progress(*e.Progress)
		case e.Added != nil:
			added = append(added, *e.Added)
		}
	})
	return added, err
}

// SyncImages re-resolves the image store's tags.
func (c *Client) SyncImages(ctx context.Context, progress func(ImageProgress)) ([]ImageSync, error) {
	var synced []ImageSync
	err := c.stream(ctx, "/images/sync", ImagesRequest{}, func(e ImageEvent) {
		switch {
		case e.Progress != nil && progress != nil:
			progress(*e.Progress)
		case e.Synced != nil:
			synced = e.Synced
		}
	})
	return synced, err
}

// stream posts in and hands each ImageEvent line of the answer to each;
// an event with Error ends it with that error.
func (c *Client) stream(ctx context.Context, path string, in any, each func(ImageEvent)) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://poolfs"+path, strings.NewReader(string(b)))
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("talking to the daemon on %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon on %s answered %s: %s", c.path, resp.Status, strings.TrimSpace(string(msg)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var e ImageEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("reading the daemon's answer: %w", err)
		}
		if e.Error != "" {
			each(e) // results before the error count
			return errors.New(e.Error)
		}
		each(e)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return nil
}

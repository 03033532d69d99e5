package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/poolfs/poolfs/profile"
)

// Client talks to a daemon's control socket.
type Client struct {
	path string
	hc   *http.Client
}

// SocketPath is path if set, else $POOLFS_CONTROL_SOCKET, else DefaultSocket.
func SocketPath(path string) string {
	if path != "" {
		return path
	}
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	return DefaultSocket
}

// NewClient returns a client for the socket at path (see SocketPath).
func NewClient(path string) *Client {
	path = SocketPath(path)
	return &Client{
		path: path,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		}},
	}
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/status", nil, &s)
	return s, err
}

// GC trims the disk cache to keepBytes.
func (c *Client) GC(ctx context.Context, keepBytes int64) (GCResult, error) {
	var r GCResult
	err := c.do(ctx, http.MethodPost, "/gc", GCRequest{KeepBytes: keepBytes}, &r)
	return r, err
}

// SetCredentials hands credentials per image reference to the daemon.
func (c *Client) SetCredentials(ctx context.Context, creds map[string]Credentials) (CredentialsResult, error) {
	var r CredentialsResult
	err := c.do(ctx, http.MethodPost, "/credentials", creds, &r)
	return r, err
}

// PushProfiles has the daemon publish the profiles of ref's layers.
func (c *Client) PushProfiles(ctx context.Context, ref string) (PushResult, error) {
	var r PushResult
	err := c.do(ctx, http.MethodPost, "/profiles/push", PushRequest{Ref: ref}, &r)
	return r, err
}

// Profiles fetches the startup profiles the daemon holds for the layers
// of image ref, encoded (profile.MediaType).
func (c *Client) Profiles(ctx context.Context, ref string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://poolfs/profiles?ref="+url.QueryEscape(ref), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, profile.MaxEncoded+1))
	if err != nil {
		return nil, fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return b, nil
}

// ImportProfiles hands an encoded profile.Set to the daemon.
func (c *Client) ImportProfiles(ctx context.Context, set []byte) (ImportResult, error) {
	var r ImportResult
	err := c.do(ctx, http.MethodPost, "/profiles", json.RawMessage(set), &r)
	return r, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://poolfs"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return nil
}

// send makes one request; an answer other than 200 is an error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("talking to the daemon on %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("daemon on %s answered %s: %s", c.path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

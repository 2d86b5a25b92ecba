package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/config"
)

// fakeAPIServer serves nodes' metadata the way the Kubernetes API server
// does for get, list (by metadata.name field selector) and watch, so the
// plugin's own client is what the tests exercise.
type fakeAPIServer struct {
	srv *httptest.Server

	mu      sync.Mutex
	token   string        // bearer token required; "" for none
	drop    chan struct{} // closed to end the open watches
	rv      int
	nodes   map[string]map[string]string // name → labels
	history []fakeEvent                  // every change, for watches from an rv
	changed chan struct{}                // closed and replaced on every change
	expire  int                          // answer the next N watches with 410 Gone
	lists   int                          // list requests served
}

type fakeEvent struct {
	rv     int
	typ    string
	name   string
	labels map[string]string
}

func newFakeAPIServer(t *testing.T, nodes map[string]map[string]string) *fakeAPIServer {
	f := &fakeAPIServer{nodes: map[string]map[string]string{}, changed: make(chan struct{}), drop: make(chan struct{})}
	for n, l := range nodes {
		f.nodes[n] = maps.Clone(l)
	}
	f.rv = 100
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// Client is a NodeAPI for the fake, sending the token in tokenFile.
func (f *fakeAPIServer) Client(tokenFile string) *NodeAPI {
	return NewNodeAPI(f.srv.URL, f.srv.Client(), tokenFile)
}

// SetLabels creates or updates a node, as kubectl label would.
func (f *fakeAPIServer) SetLabels(name string, labels map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	typ := "MODIFIED"
	if _, ok := f.nodes[name]; !ok {
		typ = "ADDED"
	}
	f.rv++
	f.nodes[name] = maps.Clone(labels)
	f.history = append(f.history, fakeEvent{rv: f.rv, typ: typ, name: name, labels: maps.Clone(labels)})
	close(f.changed)
	f.changed = make(chan struct{})
}

// ExpireWatches ends the open watches and makes the next n watch requests
// fail with 410 Gone, as after an API server restart.
func (f *fakeAPIServer) ExpireWatches(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire = n
	close(f.drop)
	f.drop = make(chan struct{})
}

// SetToken sets the bearer token the server requires.
func (f *fakeAPIServer) SetToken(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token = tok
}

// Lists is how many list requests were served.
func (f *fakeAPIServer) Lists() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

func nodeJSON(name string, rv int, labels map[string]string) map[string]any {
	return map[string]any{
		"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
		"metadata": map[string]any{"name": name, "resourceVersion": strconv.Itoa(rv), "labels": labels},
	}
}

func writeStatus(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "status": "Failure", "code": code, "message": msg})
}

func (f *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	tok := f.token
	f.mu.Unlock()
	if tok != "" && r.Header.Get("Authorization") != "Bearer "+tok {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	if !strings.Contains(r.Header.Get("Accept"), "as=PartialObjectMetadata") {
		writeStatus(w, http.StatusNotAcceptable, "metadata only, please")
		return
	}
	if name, ok := strings.CutPrefix(r.URL.Path, "/api/v1/nodes/"); ok {
		f.mu.Lock()
		labels, found := f.nodes[name]
		rv := f.rv
		f.mu.Unlock()
		if !found {
			writeStatus(w, http.StatusNotFound, fmt.Sprintf("nodes %q not found", name))
			return
		}
		_ = json.NewEncoder(w).Encode(nodeJSON(name, rv, labels))
		return
	}
	if r.URL.Path != "/api/v1/nodes" {
		writeStatus(w, http.StatusNotFound, "no such path")
		return
	}
	name, ok := strings.CutPrefix(r.URL.Query().Get("fieldSelector"), "metadata.name=")
	if !ok {
		writeStatus(w, http.StatusBadRequest, "the plugin lists its own node only")
		return
	}
	if r.URL.Query().Get("watch") == "1" {
		f.watch(w, r, name)
		return
	}
	f.mu.Lock()
	f.lists++
	items := []any{}
	if labels, found := f.nodes[name]; found {
		items = append(items, nodeJSON(name, f.rv, labels))
	}
	list := map[string]any{"kind": "PartialObjectMetadataList", "metadata": map[string]any{"resourceVersion": strconv.Itoa(f.rv)}, "items": items}
	f.mu.Unlock()
	_ = json.NewEncoder(w).Encode(list)
}

func (f *fakeAPIServer) watch(w http.ResponseWriter, r *http.Request, name string) {
	from, err := strconv.Atoi(r.URL.Query().Get("resourceVersion"))
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "watch without a resource version")
		return
	}
	f.mu.Lock()
	if f.expire > 0 {
		f.expire--
		f.mu.Unlock()
		// As the API server does once the version left its watch cache:
		// 200, then an ERROR event carrying 410.
		w.WriteHeader(http.StatusOK)
		_ = json.NewEncoder(w).Encode(map[string]any{"type": "ERROR", "object": map[string]any{"kind": "Status", "code": http.StatusGone, "reason": "Expired", "message": "too old resource version"}})
		return
	}
	drop := f.drop
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	enc := json.NewEncoder(w)
	for {
		f.mu.Lock()
		var send []fakeEvent
		for _, e := range f.history {
			if e.rv > from && e.name == name {
				send = append(send, e)
			}
		}
		changed := f.changed
		f.mu.Unlock()
		for _, e := range send {
			_ = enc.Encode(map[string]any{"type": e.typ, "object": nodeJSON(e.name, e.rv, e.labels)})
			from = e.rv
		}
		w.(http.Flusher).Flush()
		select {
		case <-changed:
		case <-drop:
			return
		case <-r.Context().Done():
			return
		}
	}
}

func TestReadNodeLabel(t *testing.T) {
	api := newFakeAPIServer(t, map[string]map[string]string{
		"a": {config.NodeLabel: "blocks", "other": "x"},
		"b": {"other": "x"},
	})
	client := api.Client("")
	got, err := ReadNodeLabel(context.Background(), client, "a")
	require.NoError(t, err)
	require.Equal(t, "blocks", got)
	got, err = ReadNodeLabel(context.Background(), client, "b")
	require.NoError(t, err)
	require.Empty(t, got)
	_, err = ReadNodeLabel(context.Background(), client, "gone")
	require.ErrorContains(t, err, "reading node gone")
	require.ErrorContains(t, err, `nodes "gone" not found`)
}

func TestNodeAPISendsCurrentToken(t *testing.T) {
	api := newFakeAPIServer(t, map[string]map[string]string{"a": {config.NodeLabel: "blocks"}})
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("first\n"), 0o600))
	client := api.Client(tokenFile)

	api.SetToken("first")
	_, err := ReadNodeLabel(context.Background(), client, "a")
	require.NoError(t, err)
	// The kubelet rotates projected tokens in place: the next request
	// carries the new one.
	api.SetToken("second")
	require.NoError(t, os.WriteFile(tokenFile, []byte("second\n"), 0o600))
	_, err = ReadNodeLabel(context.Background(), client, "a")
	require.NoError(t, err)
	api.SetToken("third")
	_, err = ReadNodeLabel(context.Background(), client, "a")
	require.ErrorContains(t, err, "401 Unauthorized")
}

// labelRecorder collects what watchNodeLabel reports.
type labelRecorder struct {
	mu  sync.Mutex
	got []string
}

func (l *labelRecorder) add(v string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, v)
}

func (l *labelRecorder) values() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func TestWatchNodeLabel(t *testing.T) {
	tests := map[string]struct {
		initial map[string]map[string]string
		// change runs once the first report (if any) is in.
		change func(api *fakeAPIServer)
		want   []string
		// relists: the node was listed again after the watch expired.
		relists bool
	}{
		"labelled node, relabelled": {
			initial: map[string]map[string]string{"gpu-1": {config.NodeLabel: "blocks"}, "gpu-2": {config.NodeLabel: "other"}},
			change: func(api *fakeAPIServer) {
				api.SetLabels("gpu-2", map[string]string{config.NodeLabel: "ignored"}) // not this node
				api.SetLabels("gpu-1", map[string]string{config.NodeLabel: "blocks", "unrelated": "y"})
				api.SetLabels("gpu-1", map[string]string{config.NodeLabel: "half"})
				api.SetLabels("gpu-1", map[string]string{})
			},
			want: []string{"blocks", "half", ""},
		},
		"node created later": {
			initial: map[string]map[string]string{},
			change: func(api *fakeAPIServer) {
				api.SetLabels("gpu-1", map[string]string{config.NodeLabel: "blocks"})
			},
			want: []string{"blocks"},
		},
		"watch expires and the node is listed again": {
			initial: map[string]map[string]string{"gpu-1": {config.NodeLabel: "blocks"}},
			change: func(api *fakeAPIServer) {
				api.ExpireWatches(2)
				// The expired watches see nothing; the relist does.
				api.SetLabels("gpu-1", map[string]string{config.NodeLabel: "half"})
			},
			want:    []string{"blocks", "half"},
			relists: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			api := newFakeAPIServer(t, tc.initial)
			ctx, cancel := context.WithCancel(context.Background())
			var rec labelRecorder
			done := make(chan struct{})
			go func() {
				defer close(done)
				watchNodeLabel(ctx, api.Client(""), "gpu-1", rec.add)
			}()
			defer func() { cancel(); <-done }()
			if _, ok := tc.initial["gpu-1"]; ok {
				require.Eventually(t, func() bool { return len(rec.values()) == 1 }, 10*time.Second, time.Millisecond)
			} else {
				require.Eventually(t, func() bool { return api.Lists() > 0 }, 10*time.Second, time.Millisecond)
			}
			tc.change(api)
			require.Eventually(t, func() bool { return len(rec.values()) >= len(tc.want) }, 10*time.Second, time.Millisecond)
			require.Equal(t, tc.want, rec.values())
			if tc.relists {
				require.Eventually(t, func() bool { return api.Lists() >= 3 }, 10*time.Second, time.Millisecond)
			}
		})
	}
}

package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/config"
)

// errNotInCluster means there is no API server to ask for the node's label.
var errNotInCluster = errors.New("not running in a cluster")

// errExpired is the API server's 410 Gone: the resource version a watch
// started from is too old, so the node must be listed again.
var errExpired = errors.New("resource version expired")

// Where a pod finds its service account (the kubelet mounts it).
const (
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	userAgent         = "gpublocks"
)

// NodeAPI reads nodes' metadata from the Kubernetes API server: get, list
// and watch on nodes, metadata only, so the plugin needs no more RBAC than
// that. It is plain HTTPS and JSON rather than client-go: client-go and the
// API machinery it links made up a quarter of the binary, and their package
// initialisation ran on every start, --node-name or not.
type NodeAPI struct {
	base      string // scheme://host:port
	client    *http.Client
	tokenFile string // re-read on each request: projected tokens rotate
}

// NewNodeAPI returns a client for the API server at base (e.g.
// "https://10.0.0.1:443") that sends the bearer token read from tokenFile
// ("" for none) with every request.
func NewNodeAPI(base string, client *http.Client, tokenFile string) *NodeAPI {
	return &NodeAPI{base: strings.TrimSuffix(base, "/"), client: client, tokenFile: tokenFile}
}

// NodeClient opens the in-cluster client for the node's label: the API
// server the pod's environment names, trusted through the service
// account's CA, authenticated with its token.
func NodeClient() (*NodeAPI, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, fmt.Errorf("%w: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set", errNotInCluster)
	}
	tokenFile := path.Join(serviceAccountDir, "token")
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, fmt.Errorf("%w: no service account token: %w", errNotInCluster, err)
	}
	ca, err := os.ReadFile(path.Join(serviceAccountDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("%w: no service account CA: %w", errNotInCluster, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("service account CA %s holds no PEM certificate", path.Join(serviceAccountDir, "ca.crt"))
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
		// A watch can sit idle for minutes: pings find a dead connection
		// (an API server that went away without closing it).
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	return NewNodeAPI("https://"+net.JoinHostPort(host, port), &http.Client{Transport: tr}, tokenFile), nil
}

// objectMeta is the part of a node's metadata the plugin reads.
type objectMeta struct {
	Name            string            `json:"name"`
	ResourceVersion string            `json:"resourceVersion"`
	Labels          map[string]string `json:"labels"`
}

type partialObject struct {
	Metadata objectMeta `json:"metadata"`
}

type partialList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []partialObject `json:"items"`
}

type watchEvent struct {
	Type   string          `json:"type"` // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
	Object json.RawMessage `json:"object"`
}

// apiStatus is the API server's error body (and a watch's ERROR object).
type apiStatus struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// statusError turns an API status into an error; 410 is errExpired.
func statusError(s apiStatus) error {
	msg := s.Message
	if msg == "" {
		msg = s.Reason
	}
	if s.Code == http.StatusGone {
		return fmt.Errorf("%w: %s", errExpired, msg)
	}
	return fmt.Errorf("API server: %d %s", s.Code, msg)
}

// get sends a GET for path with query and returns the body of a 200
// answer; anything else is an error carrying the API server's message.
func (a *NodeAPI) get(ctx context.Context, path string, query url.Values, as string) (io.ReadCloser, error) {
	u := a.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	// Metadata only (the server strips the rest), with plain JSON as the
	// fallback for servers that cannot; objectMeta reads either.
	req.Header.Set("Accept", "application/json;as="+as+";g=meta.k8s.io;v=v1,application/json")
	req.Header.Set("User-Agent", userAgent)
	if a.tokenFile != "" {
		tok, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("service account token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp.Body, nil
	}
	defer func() { _ = resp.Body.Close() }()
	s := apiStatus{Code: resp.StatusCode, Message: resp.Status}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(body, &s)
	s.Code = resp.StatusCode
	return nil, statusError(s)
}

// node reads one node's metadata.
func (a *NodeAPI) node(ctx context.Context, name string) (objectMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	body, err := a.get(ctx, "/api/v1/nodes/"+url.PathEscape(name), nil, "PartialObjectMetadata")
	if err != nil {
		return objectMeta{}, err
	}
	defer func() { _ = body.Close() }()
	var o partialObject
	if err := json.NewDecoder(body).Decode(&o); err != nil {
		return objectMeta{}, fmt.Errorf("decoding node %s: %w", name, err)
	}
	return o.Metadata, nil
}

// listNode lists the one node by name (empty when it does not exist) and
// returns the list's resource version to watch from.
func (a *NodeAPI) listNode(ctx context.Context, name string) ([]objectMeta, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	body, err := a.get(ctx, "/api/v1/nodes", url.Values{"fieldSelector": {"metadata.name=" + name}}, "PartialObjectMetadataList")
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = body.Close() }()
	var l partialList
	if err := json.NewDecoder(body).Decode(&l); err != nil {
		return nil, "", fmt.Errorf("decoding node list: %w", err)
	}
	out := make([]objectMeta, 0, len(l.Items))
	for _, it := range l.Items {
		out = append(out, it.Metadata)
	}
	return out, l.Metadata.ResourceVersion, nil
}

// watchNode follows the one node from resourceVersion rv, handing every
// added or modified version to seen. A watch the server ends (its timeout)
// is resumed from the last version seen; it returns on ctx's end or an
// error, errExpired when the node must be listed again.
func (a *NodeAPI) watchNode(ctx context.Context, name, rv string, seen func(objectMeta)) error {
	for ctx.Err() == nil {
		// Spread reconnections, as client-go's reflector does (5–10 min).
		timeout := 300 + rand.IntN(300)
		body, err := a.get(ctx, "/api/v1/nodes", url.Values{
			"fieldSelector":       {"metadata.name=" + name},
			"watch":               {"1"},
			"resourceVersion":     {rv},
			"allowWatchBookmarks": {"true"},
			"timeoutSeconds":      {strconv.Itoa(timeout)},
		}, "PartialObjectMetadata")
		if err != nil {
			return err
		}
		rv, err = readWatch(body, rv, seen)
		_ = body.Close()
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

// readWatch reads one watch stream to its end and returns the last
// resource version seen.
func readWatch(body io.Reader, rv string, seen func(objectMeta)) (string, error) {
	dec := json.NewDecoder(body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return rv, nil
			}
			return rv, fmt.Errorf("reading watch: %w", err)
		}
		if ev.Type == "ERROR" {
			var s apiStatus
			if err := json.Unmarshal(ev.Object, &s); err != nil {
				return rv, fmt.Errorf("decoding watch error: %w", err)
			}
			return rv, statusError(s)
		}
		var o partialObject
		if err := json.Unmarshal(ev.Object, &o); err != nil {
			return rv, fmt.Errorf("decoding watch event: %w", err)
		}
		if o.Metadata.ResourceVersion != "" {
			rv = o.Metadata.ResourceVersion
		}
		if ev.Type == "ADDED" || ev.Type == "MODIFIED" {
			seen(o.Metadata)
		}
	}
}

// Backoff between failed attempts to list the node.
var (
	labelRetryMin = time.Second
	labelRetryMax = 30 * time.Second
)

// watchNodeLabel follows the gpublocks.io/config label of one node and calls
// onChange with its value ("" when absent) first once the node is known,
// then on every change. It lists the node, watches it from the list's
// version, and lists again when the watch fails or expires. It returns
// when ctx is done.
func watchNodeLabel(ctx context.Context, api *NodeAPI, node string, onChange func(string)) {
	logger := klog.FromContext(ctx).WithValues("node", node)
	last, seen := "", false
	report := func(m objectMeta) {
		if m.Name != node {
			return
		}
		v := m.Labels[config.NodeLabel]
		if seen && v == last {
			return
		}
		logger.Info("Node config label", "label", config.NodeLabel, "value", v)
		last, seen = v, true
		onChange(v)
	}
	wait := labelRetryMin
	for ctx.Err() == nil {
		nodes, rv, err := api.listNode(ctx, node)
		if err == nil {
			for _, m := range nodes {
				report(m)
			}
			wait = labelRetryMin
			err = api.watchNode(ctx, node, rv, report)
			if errors.Is(err, errExpired) {
				logger.V(2).Info("Node watch expired; listing again", "err", err)
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		logger.Info("Cannot watch the node's config label; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, labelRetryMax)
	}
}

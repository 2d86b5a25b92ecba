package metrics

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Probes answer /healthz and /readyz.
type Probes struct {
	// Live returns nil while the process and its main loop respond
	// (/healthz, the liveness probe); nil means always live.
	Live func(ctx context.Context) error
	// Ready reports whether every resource is registered with the kubelet
	// (/readyz); nil means always ready.
	Ready func() bool
}

// liveTimeout bounds one /healthz check.
const liveTimeout = 5 * time.Second

// Handler serves /metrics from m and the probes.
func (m *Metrics) Handler(p Probes) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", m.serveMetrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if p.Live != nil {
			ctx, cancel := context.WithTimeout(r.Context(), liveTimeout)
			defer cancel()
			if err := p.Live(ctx); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p.Ready != nil && !p.Ready() {
			http.Error(w, ErrNotReady.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// serveMetrics writes every metric in the text format, gzipped when the
// scraper accepts it (Prometheus does).
func (m *Metrics) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", ContentType)
	var out io.Writer = w
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		defer func() {
			if err := gz.Close(); err != nil {
				m.writeErrors.Add(1)
			}
		}()
		out = gz
	}
	if err := writeText(out, m.families()); err != nil {
		// The scraper went away mid-answer; nothing to tell it.
		m.writeErrors.Add(1)
	}
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.TrimSpace(enc) != "gzip" {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		return !ok || (q != "0" && q != "0.0" && q != "0.00" && q != "0.000")
	}
	return false
}

// Server is the metrics listener.
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Listen binds addr (e.g. ":9400") for h. Binding early makes a port
// conflict an error at start-up rather than a silent absence of metrics.
func Listen(addr string, h http.Handler) (*Server, error) {
	// Plain TCP: a scrape gains nothing from Multipath TCP, which Go
	// otherwise tries first, probing the kernel at start-up.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	lis, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	return &Server{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second},
		lis: lis,
	}, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Serve serves until ctx ends, then shuts down within a second.
func (s *Server) Serve(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	logger.Info("Serving metrics", "addr", s.lis.Addr().String(), "paths", "/metrics /healthz /readyz")
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	})
	defer stop()
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

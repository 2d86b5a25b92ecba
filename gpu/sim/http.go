package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// ErrNotLoopback means a fault-injection address is not on the loopback
// interface. Fault injection takes GPUs out of service with an
// unauthenticated POST, so only processes on the node itself may reach it.
var ErrNotLoopback = errors.New("fault injection is served on loopback addresses only")

// CheckLoopback accepts an address ("host:port") whose host is a loopback
// IP (127.0.0.0/8, ::1) or "localhost"; anything else, an empty host (every
// interface) included, is an error wrapping ErrNotLoopback.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q is not host:port: %w", ErrNotLoopback, addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if host == "" {
		host = "every interface"
	}
	return fmt.Errorf("%w: %q listens on %s; use e.g. 127.0.0.1:9401 or [::1]:9401", ErrNotLoopback, addr, host)
}

// A FaultServer serves FaultHandler on a loopback listener.
type FaultServer struct {
	srv *http.Server
	lis net.Listener
}

// ListenFaults binds addr, which must pass CheckLoopback, for FaultHandler.
// "localhost" is resolved by the system, so the bound address is checked
// too. Binding early makes a port conflict an error at start-up.
func (b *Backend) ListenFaults(addr string) (*FaultServer, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fault injection listener on %s: %w", addr, err)
	}
	if a, ok := lis.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		_ = lis.Close()
		return nil, fmt.Errorf("%w: %q bound %s", ErrNotLoopback, addr, lis.Addr())
	}
	return &FaultServer{
		srv: &http.Server{Handler: b.FaultHandler(), ReadHeaderTimeout: 5 * time.Second},
		lis: lis,
	}, nil
}

// Addr is the bound address (useful with port 0).
func (s *FaultServer) Addr() net.Addr { return s.lis.Addr() }

// Serve serves until ctx ends, then shuts down within a second.
func (s *FaultServer) Serve(ctx context.Context) error {
	klog.FromContext(ctx).Info("Serving fault injection for simulated GPUs", "addr", s.lis.Addr().String(), "path", "/simulate/")
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	})
	defer stop()
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("fault injection server: %w", err)
	}
	return nil
}

// FaultHandler serves fault injection over HTTP, so tests and operators can
// fault a simulated GPU inside a running `gpublocks serve --simulate`
// process (serve gives it its own loopback listener, --simulate-addr, for
// simulated hardware only; see ListenFaults):
//
//	POST /simulate/xid?gpu=N&xid=X[&gi=G&ci=C]   an XID event (MIG-scoped with gi and ci)
//	POST /simulate/ecc?gpu=N                     a double-bit ECC error
//	POST /simulate/lost?gpu=N                    the GPU falls off the bus
//	POST /simulate/restore?gpu=N                 a lost GPU answers again
//	POST /simulate/process?gpu=N[&mig=UUID]      a compute process starts (in that MIG device); answers "pid P"
//	POST /simulate/process/stop?pid=P            it ends
func (b *Backend) FaultHandler() http.Handler {
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, err error) {
		if errors.Is(err, ErrNoListener) {
			http.Error(w, err.Error()+" (is health.disabled set, or serve not started yet?)", http.StatusConflict)
			return
		}
		http.Error(w, err.Error(), http.StatusBadRequest)
	}
	mux.HandleFunc("POST /simulate/process", func(w http.ResponseWriter, r *http.Request) {
		q := query(r.URL.Query())
		gpu, err := q.number("gpu")
		var pid uint32
		if err == nil {
			pid, err = b.StartProcess(int(gpu), url.Values(q).Get("mig"))
		}
		if err != nil {
			fail(w, err)
			return
		}
		_, _ = fmt.Fprintf(w, "pid %d\n", pid)
	})
	mux.HandleFunc("POST /simulate/process/stop", func(w http.ResponseWriter, r *http.Request) {
		pid, err := query(r.URL.Query()).number("pid")
		if err == nil {
			err = b.StopProcess(uint32(pid))
		}
		if err != nil {
			fail(w, err)
			return
		}
		_, _ = w.Write([]byte("stopped\n"))
	})
	handle := func(path string, inject func(gpu int, q query) error) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			q := query(r.URL.Query())
			gpu, err := q.number("gpu")
			if err == nil {
				err = inject(int(gpu), q)
			}
			if err != nil {
				fail(w, err)
				return
			}
			_, _ = w.Write([]byte("injected\n"))
		})
	}
	handle("/simulate/xid", func(gpu int, q query) error {
		xid, err := q.number("xid")
		if err != nil {
			return err
		}
		if !q.has("gi") && !q.has("ci") {
			return b.InjectXID(gpu, xid)
		}
		gi, err := q.number("gi")
		if err != nil {
			return err
		}
		ci, err := q.number("ci")
		if err != nil {
			return err
		}
		return b.InjectMigXID(gpu, uint32(gi), uint32(ci), xid)
	})
	handle("/simulate/ecc", func(gpu int, _ query) error { return b.InjectDoubleBitECC(gpu) })
	handle("/simulate/lost", func(gpu int, _ query) error { return b.InjectGPULost(gpu) })
	handle("/simulate/restore", func(gpu int, _ query) error { return b.RestoreGPU(gpu) })
	return mux
}

type query url.Values

func (q query) has(name string) bool { return url.Values(q).Has(name) }

func (q query) number(name string) (uint64, error) {
	s := url.Values(q).Get(name)
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("query parameter %q: want an unsigned number, got %q", name, s)
	}
	return v, nil
}

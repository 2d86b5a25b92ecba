package sim

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// FaultHandler serves fault injection over HTTP, so tests and operators can
// fault a simulated GPU inside a running `gpublocks serve --simulate`
// process (serve mounts it under /simulate/ on the metrics address, for
// simulated hardware only):
//
//	POST /simulate/xid?gpu=N&xid=X[&gi=G&ci=C]   an XID event (MIG-scoped with gi and ci)
//	POST /simulate/ecc?gpu=N                     a double-bit ECC error
//	POST /simulate/lost?gpu=N                    the GPU falls off the bus
//	POST /simulate/restore?gpu=N                 a lost GPU answers again
func (b *Backend) FaultHandler() http.Handler {
	mux := http.NewServeMux()
	handle := func(path string, inject func(gpu int, q query) error) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			q := query(r.URL.Query())
			gpu, err := q.number("gpu")
			if err == nil {
				err = inject(int(gpu), q)
			}
			switch {
			case errors.Is(err, ErrNoListener):
				http.Error(w, err.Error()+" (is health.disabled set, or serve not started yet?)", http.StatusConflict)
				return
			case err != nil:
				http.Error(w, err.Error(), http.StatusBadRequest)
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

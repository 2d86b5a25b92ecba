package sim

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
)

func TestFaultHandler(t *testing.T) {
	b, err := New("dgxa100-mig")
	require.NoError(t, err)
	h := b.FaultHandler()
	post := func(target string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", target, nil))
		return rec.Code, rec.Body.String()
	}

	// Nothing listens yet: the caller is told why nothing happened.
	code, body := post("/simulate/xid?gpu=3&xid=48")
	require.Equal(t, 409, code)
	require.Contains(t, body, "health.disabled")

	// Listen as the health monitor does, on every GPU.
	lib := b.NVML()
	set, ret := lib.EventSetCreate()
	require.Equal(t, nvml.SUCCESS, ret)
	n, _ := lib.DeviceGetCount()
	for i := range n {
		dev, _ := lib.DeviceGetHandleByIndex(i)
		require.Equal(t, nvml.SUCCESS, dev.RegisterEvents(nvml.EventTypeXidCriticalError|nvml.EventTypeDoubleBitEccError, set))
	}

	steps := []struct {
		name, target string
		code         int
		body         string
	}{
		{"xid", "/simulate/xid?gpu=3&xid=48", 200, "injected"},
		{"mig-scoped xid", "/simulate/xid?gpu=1&xid=48&gi=7&ci=0", 200, "injected"},
		{"ecc", "/simulate/ecc?gpu=2", 200, "injected"},
		{"lost", "/simulate/lost?gpu=4", 200, "injected"},
		{"restore", "/simulate/restore?gpu=4", 200, "injected"},
		{"missing xid", "/simulate/xid?gpu=3", 400, `"xid"`},
		{"gi without ci", "/simulate/xid?gpu=1&xid=48&gi=7", 400, `"ci"`},
		{"bad gpu", "/simulate/xid?gpu=x&xid=48", 400, `"gpu"`},
		{"no such gpu", "/simulate/xid?gpu=99&xid=48", 400, "99"},
		{"process", "/simulate/process?gpu=3", 200, "pid 4001\n"},
		{"process in a MIG device", "/simulate/process?gpu=1&mig=" + migUUIDOf(t, b, 1), 200, "pid 4002\n"},
		{"process on a MIG GPU", "/simulate/process?gpu=1", 400, "MIG enabled"},
		{"stop", "/simulate/process/stop?pid=4001", 200, "stopped"},
		{"stop again", "/simulate/process/stop?pid=4001", 400, "no simulated process 4001"},
	}
	for _, s := range steps {
		code, body := post(s.target)
		require.Equal(t, s.code, code, "%s: %s", s.name, body)
		require.Contains(t, body, s.body, s.name)
		if s.name == "lost" {
			require.True(t, b.Lost(4))
		}
	}
	require.False(t, b.Lost(4), "restored")

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/simulate/xid?gpu=3&xid=48", nil))
	require.Equal(t, 405, rec.Code, "injection only by POST")
}

// migUUIDOf is the UUID of GPU index's first MIG device.
func migUUIDOf(t *testing.T, b *Backend, index int) string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	migs := b.gpus[index].migDevicesLocked()
	require.NotEmpty(t, migs)
	return migs[0].uuid
}

func TestCheckLoopback(t *testing.T) {
	cases := map[string]struct {
		addr string
		ok   bool
	}{
		"IPv4 loopback":        {addr: "127.0.0.1:9401", ok: true},
		"rest of 127/8":        {addr: "127.3.4.5:9401", ok: true},
		"IPv6 loopback":        {addr: "[::1]:9401", ok: true},
		"localhost":            {addr: "localhost:9401", ok: true},
		"localhost any case":   {addr: "LocalHost:0", ok: true},
		"every interface":      {addr: ":9401"},
		"IPv4 unspecified":     {addr: "0.0.0.0:9401"},
		"IPv6 unspecified":     {addr: "[::]:9401"},
		"private address":      {addr: "10.0.0.5:9401"},
		"host name":            {addr: "node1:9401"},
		"localhost look-alike": {addr: "localhost.example.com:9401"},
		"no port":              {addr: "127.0.0.1"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := CheckLoopback(tc.addr)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrNotLoopback)
			require.Contains(t, err.Error(), tc.addr)
		})
	}
}

func TestListenFaults(t *testing.T) {
	b, err := New("dgxa100")
	require.NoError(t, err)

	_, err = b.ListenFaults("0.0.0.0:0")
	require.ErrorIs(t, err, ErrNotLoopback)

	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		s, err := b.ListenFaults(addr)
		require.NoError(t, err, addr)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		resp, err := http.Post("http://"+s.Addr().String()+"/simulate/restore?gpu=0", "", nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, addr)
		cancel()
		require.NoError(t, <-done)
	}
}

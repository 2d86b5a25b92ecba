package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func snapshot() Snapshot {
	return Snapshot{
		Resources: []Resource{
			{Name: "nvidia.com/gpu", Healthy: 7, Unhealthy: 1},
			{Name: "nvidia.com/gpu-blocks", Healthy: 100},
		},
		GPUs: []GPU{
			{Index: 0, UUID: "GPU-a", Model: "NVIDIA A100-SXM4-40GB", Shape: "whole"},
			{Index: 1, UUID: "GPU-b", Model: "NVIDIA A100-SXM4-40GB", Shape: "blocks", Healthy: true},
		},
		Config:     Config{Name: "default", Generation: 3, Errors: 2, Valid: true},
		MigLayouts: []MigLayout{{Index: 1, UUID: "GPU-b", Pending: true}},
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	require.NoError(t, err)
	return rec.Code, string(body)
}

func TestScrape(t *testing.T) {
	m := New(snapshot)
	m.Allocate("nvidia.com/gpu", 40*time.Microsecond, nil)
	m.Allocate("nvidia.com/gpu", 2*time.Millisecond, nil)
	m.Allocate("nvidia.com/gpu-blocks", 30*time.Microsecond, errors.New("bad"))
	m.XID(0, "GPU-a", 48, false)
	m.XID(0, "GPU-a", 13, true)
	m.XID(0, "GPU-a", 13, true)
	m.DoubleBitECC(1, "GPU-b")
	m.ProbeFailure(1, "GPU-b")

	code, body := get(t, m.Handler(Probes{}), "/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu"} 7`,
		`gpublocks_devices{health="unhealthy",resource="nvidia.com/gpu"} 1`,
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu-blocks"} 100`,
		`gpublocks_devices{health="unhealthy",resource="nvidia.com/gpu-blocks"} 0`,
		`gpublocks_gpu_shape{gpu="1",model="NVIDIA A100-SXM4-40GB",shape="blocks",uuid="GPU-b"} 1`,
		`gpublocks_gpu_healthy{gpu="0",uuid="GPU-a"} 0`,
		`gpublocks_gpu_healthy{gpu="1",uuid="GPU-b"} 1`,
		`gpublocks_config_generation{config="default"} 3`,
		`gpublocks_config_errors_total 2`,
		`gpublocks_config_valid 1`,
		`gpublocks_mig_layout_pending{gpu="1",uuid="GPU-b"} 1`,
		`gpublocks_xid_events_total{gpu="0",ignored="false",uuid="GPU-a",xid="48"} 1`,
		`gpublocks_xid_events_total{gpu="0",ignored="true",uuid="GPU-a",xid="13"} 2`,
		`gpublocks_ecc_double_bit_events_total{gpu="1",uuid="GPU-b"} 1`,
		`gpublocks_probe_failures_total{gpu="1",uuid="GPU-b"} 1`,
		`gpublocks_allocations_total{resource="nvidia.com/gpu",result="ok"} 2`,
		`gpublocks_allocations_total{resource="nvidia.com/gpu-blocks",result="error"} 1`,
		`gpublocks_allocate_duration_seconds_bucket{resource="nvidia.com/gpu",le="5e-05"} 1`,
		`gpublocks_allocate_duration_seconds_bucket{resource="nvidia.com/gpu",le="0.0025"} 2`,
		`gpublocks_allocate_duration_seconds_count{resource="nvidia.com/gpu"} 2`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		require.Contains(t, body, want)
	}
}

func TestProbes(t *testing.T) {
	tests := map[string]struct {
		probes  Probes
		path    string
		want    int
		message string
	}{
		"live":           {path: "/healthz", want: http.StatusOK},
		"loop stuck":     {probes: Probes{Live: func(context.Context) error { return errors.New("main loop did not answer") }}, path: "/healthz", want: http.StatusServiceUnavailable, message: "main loop did not answer"},
		"ready":          {probes: Probes{Ready: func() bool { return true }}, path: "/readyz", want: http.StatusOK},
		"not registered": {probes: Probes{Ready: func() bool { return false }}, path: "/readyz", want: http.StatusServiceUnavailable, message: ErrNotReady.Error()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, body := get(t, New(nil).Handler(tc.probes), tc.path)
			require.Equal(t, tc.want, code)
			require.Contains(t, body, tc.message)
		})
	}
}

func TestServeShutsDownWithContext(t *testing.T) {
	s, err := Listen("127.0.0.1:0", New(nil).Handler(Probes{}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	resp, err := http.Get("http://" + s.Addr().String() + "/healthz")
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	cancel()
	require.NoError(t, <-done)
}

func BenchmarkAllocate(b *testing.B) {
	m := New(nil)
	m.Allocate("nvidia.com/gpu", time.Microsecond, nil)
	b.ReportAllocs()
	for b.Loop() {
		m.Allocate("nvidia.com/gpu", 40*time.Microsecond, nil)
	}
}

// TestXIDLabelBounded injects 10,000 distinct XID codes on one GPU: the
// series stay bounded (KnownXIDs, the first MaxXIDCodes others, and
// "other"), and no event is lost.
func TestXIDLabelBounded(t *testing.T) {
	m := New(nil)
	const n = 10000
	for x := range uint64(n) {
		m.XID(0, "GPU-a", x+1, false)
	}
	m.XID(0, "GPU-a", 79, false) // a known fault keeps its value after the bound is reached

	_, body := get(t, m.Handler(Probes{}), "/metrics")
	series := 0
	total := 0.0
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, "gpublocks_xid_events_total{") {
			continue
		}
		series++
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		require.NoError(t, err)
		total += v
	}
	require.Equal(t, len(KnownXIDs)+MaxXIDCodes+1, series)
	require.Equal(t, float64(n+1), total)
	require.Contains(t, body, `gpublocks_xid_events_total{gpu="0",ignored="false",uuid="GPU-a",xid="79"} 2`)
	// Codes 1-34 less 13 and 31 are the first 32 outside KnownXIDs.
	require.Contains(t, body, `gpublocks_xid_events_total{gpu="0",ignored="false",uuid="GPU-a",xid="34"} 1`)
	require.NotContains(t, body, `xid="35"`)
	require.Contains(t, body, fmt.Sprintf(`gpublocks_xid_events_total{gpu="0",ignored="false",uuid="GPU-a",xid="other"} %d`, n-len(KnownXIDs)-MaxXIDCodes))
}

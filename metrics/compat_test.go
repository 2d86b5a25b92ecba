package metrics

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// reference is what gpublocks served with prometheus/client_golang before
// the package wrote the format itself: the same metrics, registered the
// same way. The tests hold the two outputs side by side.
type reference struct {
	reg                       *prometheus.Registry
	xids, ecc, probes, allocs *prometheus.CounterVec
	allocD                    *prometheus.HistogramVec
}

func newReference(src Source) *reference {
	r := &reference{
		reg: prometheus.NewRegistry(),
		xids: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "xid_events_total",
			Help: "NVML XID events by GPU and code; ignored=\"true\" for XIDs on the ignore list (or with health monitoring disabled), which change no device's health."},
			[]string{"gpu", "uuid", "xid", "ignored"}),
		ecc: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "ecc_double_bit_events_total",
			Help: "NVML double-bit ECC error events by GPU."}, []string{"gpu", "uuid"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "probe_failures_total",
			Help: "GPUs marked unhealthy because an NVML probe failed (no event support, or a lost GPU NVML did not name)."}, []string{"gpu", "uuid"}),
		allocs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "allocations_total",
			Help: "Allocate calls by resource and result (ok, error)."}, []string{"resource", "result"}),
		allocD: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "allocate_duration_seconds",
			Help: "Time to answer one Allocate call, by resource.", Buckets: AllocateBuckets}, []string{"resource"}),
	}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.xids, r.ecc, r.probes, r.allocs, r.allocD)
	if src != nil {
		r.reg.MustRegister(refState{src})
	}
	return r
}

func (r *reference) allocate(resource string, took time.Duration, failed bool) {
	ok, bad := r.allocs.WithLabelValues(resource, "ok"), r.allocs.WithLabelValues(resource, "error")
	if failed {
		bad.Inc()
	} else {
		ok.Inc()
	}
	r.allocD.WithLabelValues(resource).Observe(took.Seconds())
}

type refState struct{ src Source }

var refDescs = map[string]*prometheus.Desc{
	"devices": prometheus.NewDesc("gpublocks_devices", "Devices offered to the kubelet, by resource and health (healthy, unhealthy).", []string{"resource", "health"}, nil),
	"shape":   prometheus.NewDesc("gpublocks_gpu_shape", "Always 1: the shape each GPU is offered in (whole, mig, blocks, none).", []string{"gpu", "uuid", "model", "shape"}, nil),
	"health":  prometheus.NewDesc("gpublocks_gpu_healthy", "1 when the GPU has no GPU-wide fault, 0 while it is unhealthy (MIG-scoped faults show in gpublocks_devices).", []string{"gpu", "uuid"}, nil),
	"gen":     prometheus.NewDesc("gpublocks_config_generation", "Generation of the config in force; bumped on every applied change.", []string{"config"}, nil),
	"errors":  prometheus.NewDesc("gpublocks_config_errors_total", "Configs rejected since start; the last good config keeps serving.", nil, nil),
	"valid":   prometheus.NewDesc("gpublocks_config_valid", "1 when the last config load succeeded, 0 when it was rejected.", nil, nil),
	"migPending": prometheus.NewDesc("gpublocks_mig_layout_pending", "1 while a GPU waits for the MIG layout its config rule asks for (devices allocated, processes running, or a failed attempt), 0 once it holds it.",
		[]string{"gpu", "uuid"}, nil),
}

func (refState) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range refDescs {
		ch <- d
	}
}

func (c refState) Collect(ch chan<- prometheus.Metric) {
	s := c.src()
	for _, r := range s.Resources {
		ch <- prometheus.MustNewConstMetric(refDescs["devices"], prometheus.GaugeValue, float64(r.Healthy), r.Name, Healthy)
		ch <- prometheus.MustNewConstMetric(refDescs["devices"], prometheus.GaugeValue, float64(r.Unhealthy), r.Name, Unhealthy)
	}
	for _, g := range s.GPUs {
		idx := strconv.Itoa(g.Index)
		ch <- prometheus.MustNewConstMetric(refDescs["shape"], prometheus.GaugeValue, 1, idx, g.UUID, g.Model, g.Shape)
		ch <- prometheus.MustNewConstMetric(refDescs["health"], prometheus.GaugeValue, boolValue(g.Healthy), idx, g.UUID)
	}
	for _, l := range s.MigLayouts {
		ch <- prometheus.MustNewConstMetric(refDescs["migPending"], prometheus.GaugeValue, boolValue(l.Pending), strconv.Itoa(l.Index), l.UUID)
	}
	ch <- prometheus.MustNewConstMetric(refDescs["gen"], prometheus.GaugeValue, float64(s.Config.Generation), s.Config.Name)
	ch <- prometheus.MustNewConstMetric(refDescs["errors"], prometheus.CounterValue, float64(s.Config.Errors))
	ch <- prometheus.MustNewConstMetric(refDescs["valid"], prometheus.GaugeValue, boolValue(s.Config.Valid))
}

// scrapeWith GETs /metrics from h with the given Accept-Encoding and
// returns the content type and the (decompressed) body.
func scrapeWith(t *testing.T, h http.Handler, encoding string) (string, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if encoding != "" {
		req.Header.Set("Accept-Encoding", encoding)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	var body io.Reader = rec.Body
	if rec.Header().Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(rec.Body)
		require.NoError(t, err)
		body = gz
	}
	data, err := io.ReadAll(body)
	require.NoError(t, err)
	return rec.Header().Get("Content-Type"), string(data)
}

// split returns the lines of a scrape for the gpublocks and promhttp
// families (values and all), and the go_ and process_ lines with their
// values cut off (they differ from one read to the next).
func split(body string) (own []string, runtime []string) {
	value := regexp.MustCompile(` [^ ]+$`)
	for line := range strings.Lines(body) {
		line = strings.TrimSuffix(line, "\n")
		n := strings.TrimPrefix(strings.TrimPrefix(line, "# HELP "), "# TYPE ")
		if strings.HasPrefix(n, "go_") || strings.HasPrefix(n, "process_") {
			if !strings.HasPrefix(line, "#") {
				line = value.ReplaceAllString(line, "")
			}
			runtime = append(runtime, line)
			continue
		}
		own = append(own, line)
	}
	return own, runtime
}

func TestTextMatchesClientGolang(t *testing.T) {
	tests := map[string]struct {
		src    Source
		events func(m *Metrics, r *reference)
	}{
		"no state, no events": {},
		"everything": {
			src: func() Snapshot {
				s := snapshot()
				s.GPUs = append(s.GPUs, GPU{Index: 10, UUID: `GPU-"q"\x`, Model: "line\nbreak", Shape: "mig"})
				s.MigLayouts = []MigLayout{{Index: 10, UUID: `GPU-"q"\x`, Pending: true}, {Index: 2, UUID: "GPU-c"}}
				return s
			},
			events: func(m *Metrics, r *reference) {
				for _, a := range []struct {
					res    string
					took   time.Duration
					failed bool
				}{
					{"nvidia.com/gpu", 40 * time.Microsecond, false},
					{"nvidia.com/gpu", 25 * time.Microsecond, false}, // on a bound: le="2.5e-05"
					{"nvidia.com/gpu", 2 * time.Second, false},       // beyond the last bound
					{"nvidia.com/gpu-blocks", 3 * time.Millisecond, true},
					{"nvidia.com/mig-1g.5gb", 700 * time.Microsecond, false},
				} {
					var err error
					if a.failed {
						err = io.EOF
					}
					m.Allocate(a.res, a.took, err)
					r.allocate(a.res, a.took, a.failed)
				}
				for _, x := range []struct {
					gpu     int
					uuid    string
					xid     uint64
					ignored bool
				}{{0, "GPU-a", 48, false}, {0, "GPU-a", 13, true}, {0, "GPU-a", 13, true}, {10, "GPU-b", 79, false}, {2, "GPU-c", 79, false}} {
					m.XID(x.gpu, x.uuid, x.xid, x.ignored)
					r.xids.WithLabelValues(strconv.Itoa(x.gpu), x.uuid, strconv.FormatUint(x.xid, 10), strconv.FormatBool(x.ignored)).Inc()
				}
				m.DoubleBitECC(1, "GPU-b")
				r.ecc.WithLabelValues("1", "GPU-b").Inc()
				m.ProbeFailure(1, "GPU-b")
				m.ProbeFailure(1, "GPU-b")
				r.probes.WithLabelValues("1", "GPU-b").Add(2)
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, r := New(tc.src), newReference(tc.src)
			if tc.events != nil {
				tc.events(m, r)
			}
			refHandler := promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg})
			for _, enc := range []string{"", "gzip", "gzip;q=0, identity"} {
				wantType, want := scrapeWith(t, refHandler, enc)
				gotType, got := scrapeWith(t, m.Handler(Probes{}), enc)
				require.Equal(t, wantType, gotType)
				wantOwn, wantRuntime := split(want)
				gotOwn, gotRuntime := split(got)
				require.Equal(t, wantOwn, gotOwn, "Accept-Encoding %q", enc)
				require.Equal(t, wantRuntime, gotRuntime, "Accept-Encoding %q", enc)

				// And a Prometheus parser reads it.
				fams, err := parser().TextToMetricFamilies(strings.NewReader(got))
				require.NoError(t, err)
				require.Contains(t, fams, "process_resident_memory_bytes")
			}
		})
	}
}

// TestRuntimeValuesAgree reads the go_ and process_ values that do not
// move between two reads from both writers.
func TestRuntimeValuesAgree(t *testing.T) {
	r := newReference(nil)
	_, want := scrapeWith(t, promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}), "")
	_, got := scrapeWith(t, New(nil).Handler(Probes{}), "")
	parse := func(body string) map[string]float64 {
		fams, err := parser().TextToMetricFamilies(strings.NewReader(body))
		require.NoError(t, err)
		out := map[string]float64{}
		for n, f := range fams {
			for _, m := range f.Metric {
				switch {
				case m.Gauge != nil:
					out[n] = m.Gauge.GetValue()
				case m.Counter != nil:
					out[n] = m.Counter.GetValue()
				}
			}
		}
		return out
	}
	w, g := parse(want), parse(got)
	for _, n := range []string{"go_gc_gogc_percent", "go_gc_gomemlimit_bytes", "go_sched_gomaxprocs_threads", "go_info",
		"process_max_fds", "process_virtual_memory_max_bytes", "process_start_time_seconds"} {
		require.Contains(t, g, n)
		require.InDelta(t, w[n], g[n], 0.011, n) // start time: 1/100 s ticks
	}
	// Resident memory moves a little between the reads.
	require.InEpsilon(t, w["process_resident_memory_bytes"], g["process_resident_memory_bytes"], 0.2)
	require.Positive(t, g["process_cpu_seconds_total"])
	require.Positive(t, g["process_open_fds"])
	require.True(t, slices.ContainsFunc([]string{"go_goroutines", "go_threads"}, func(n string) bool { return g[n] > 0 }))
}

func parser() *expfmt.TextParser {
	p := expfmt.NewTextParser(model.LegacyValidation)
	return &p
}

// Package metrics exposes gpublocks' Prometheus metrics (DESIGN §7) on a
// registry of its own, plus the /healthz and /readyz probes, over one HTTP
// listener.
//
// State that already lives in the daemon (devices per resource and health,
// GPU shapes, the config status) is read at scrape time through a Source,
// so it can never drift from what the kubelet is served. Events (XIDs,
// Allocate calls) are counted as they happen; Allocate's path is kept cheap:
// its counters and histogram are resolved once per resource, and each call
// is a map lookup and three atomic updates.
package metrics

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "gpublocks"

// Health label values of gpublocks_devices.
const (
	Healthy   = "healthy"
	Unhealthy = "unhealthy"
)

// AllocateBuckets are the Allocate latency buckets in seconds: Allocate is
// answered from memory in tens of microseconds, so most buckets sit below
// one millisecond.
var AllocateBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 250e-3, 1}

// XIDOther is the xid label value that every XID code beyond the bound
// below is counted under.
const XIDOther = "other"

// MaxXIDCodes is how many distinct XID codes outside KnownXIDs get a label
// value of their own (the first ones seen); later codes count as XIDOther.
// NVML reports the code as a 64-bit number, so without a bound a faulty
// driver or a flood of injections would add one series per value.
const MaxXIDCodes = 32

// KnownXIDs always keep their own xid label value, however many other codes
// were seen: the default ignore list and the XIDs NVIDIA documents as
// hardware faults, so alerts on them never fold into XIDOther.
var KnownXIDs = []uint64{13, 31, 43, 45, 48, 63, 64, 68, 74, 79, 92, 94, 95, 109, 119, 120}

// Resource is one served resource's device counts.
type Resource struct {
	Name               string
	Healthy, Unhealthy int
}

// GPU is one physical GPU as served.
type GPU struct {
	Index   int
	UUID    string
	Model   string
	Shape   string // whole, mig, blocks, none
	Healthy bool   // no GPU-wide fault
}

// Config is the config status.
type Config struct {
	Name       string
	Generation int64 // bumped on every applied change
	Errors     int64 // configs rejected so far
	Valid      bool  // the last load succeeded
}

// Snapshot is what the daemon serves at scrape time.
type Snapshot struct {
	Resources []Resource
	GPUs      []GPU
	Config    Config
}

// Source returns the current snapshot; it is called once per scrape.
type Source func() Snapshot

// Metrics holds the registry and the event-driven metrics.
type Metrics struct {
	reg    *prometheus.Registry
	xids   *prometheus.CounterVec
	ecc    *prometheus.CounterVec
	probes *prometheus.CounterVec
	allocs *prometheus.CounterVec
	allocD *prometheus.HistogramVec

	hot   atomic.Pointer[map[string]*allocChildren] // copy-on-write
	hotMu sync.Mutex                                // serialises writers of hot

	xidMu    sync.Mutex
	xidCodes map[uint64]string // codes with a label value of their own
	xidExtra int               // codes in xidCodes beyond KnownXIDs
}

// allocChildren are one resource's pre-resolved Allocate metrics.
type allocChildren struct {
	ok, failed prometheus.Counter
	took       prometheus.Observer
}

// New builds the metrics on a fresh registry, with the Go and process
// collectors, reading served state from src (nil: none).
func New(src Source) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		xids: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "xid_events_total",
			Help: "NVML XID events by GPU and code; ignored=\"true\" for XIDs on the ignore list (or with health monitoring disabled), which change no device's health.",
		}, []string{"gpu", "uuid", "xid", "ignored"}),
		ecc: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "ecc_double_bit_events_total",
			Help: "NVML double-bit ECC error events by GPU.",
		}, []string{"gpu", "uuid"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "probe_failures_total",
			Help: "GPUs marked unhealthy because an NVML probe failed (no event support, or a lost GPU NVML did not name).",
		}, []string{"gpu", "uuid"}),
		allocs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "allocations_total",
			Help: "Allocate calls by resource and result (ok, error).",
		}, []string{"resource", "result"}),
		allocD: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "allocate_duration_seconds",
			Help:    "Time to answer one Allocate call, by resource.",
			Buckets: AllocateBuckets,
		}, []string{"resource"}),
	}
	m.xidCodes = make(map[uint64]string, len(KnownXIDs)+MaxXIDCodes)
	for _, x := range KnownXIDs {
		m.xidCodes[x] = strconv.FormatUint(x, 10)
	}
	empty := map[string]*allocChildren{}
	m.hot.Store(&empty)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.xids, m.ecc, m.probes, m.allocs, m.allocD,
	)
	if src != nil {
		m.reg.MustRegister(newStateCollector(src))
	}
	return m
}

// Registry returns the registry, for serving and tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Allocate counts one Allocate call on resource that took took and failed
// with err (nil on success). It is on the hot path: after the first call
// per resource it formats no labels and allocates nothing.
func (m *Metrics) Allocate(resource string, took time.Duration, err error) {
	c := (*m.hot.Load())[resource]
	if c == nil {
		c = m.children(resource)
	}
	if err != nil {
		c.failed.Inc()
	} else {
		c.ok.Inc()
	}
	c.took.Observe(took.Seconds())
}

// children resolves and publishes resource's Allocate metrics.
func (m *Metrics) children(resource string) *allocChildren {
	m.hotMu.Lock()
	defer m.hotMu.Unlock()
	old := *m.hot.Load()
	if c := old[resource]; c != nil {
		return c
	}
	c := &allocChildren{
		ok:     m.allocs.WithLabelValues(resource, "ok"),
		failed: m.allocs.WithLabelValues(resource, "error"),
		took:   m.allocD.WithLabelValues(resource),
	}
	next := make(map[string]*allocChildren, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[resource] = c
	m.hot.Store(&next)
	return c
}

// XID counts one XID on a GPU, under its code's label value or, past the
// bound (MaxXIDCodes), under XIDOther.
func (m *Metrics) XID(gpu int, uuid string, xid uint64, ignored bool) {
	m.xids.WithLabelValues(strconv.Itoa(gpu), uuid, m.xidLabel(xid), strconv.FormatBool(ignored)).Inc()
}

// xidLabel is the xid label value for code: its own for KnownXIDs and the
// first MaxXIDCodes other codes seen, XIDOther after that.
func (m *Metrics) xidLabel(code uint64) string {
	m.xidMu.Lock()
	defer m.xidMu.Unlock()
	if v, ok := m.xidCodes[code]; ok {
		return v
	}
	if m.xidExtra >= MaxXIDCodes {
		return XIDOther
	}
	v := strconv.FormatUint(code, 10)
	m.xidCodes[code] = v
	m.xidExtra++
	return v
}

// DoubleBitECC counts one double-bit ECC event on a GPU.
func (m *Metrics) DoubleBitECC(gpu int, uuid string) {
	m.ecc.WithLabelValues(strconv.Itoa(gpu), uuid).Inc()
}

// ProbeFailure counts one GPU marked unhealthy by a failed probe.
func (m *Metrics) ProbeFailure(gpu int, uuid string) {
	m.probes.WithLabelValues(strconv.Itoa(gpu), uuid).Inc()
}

// ErrNotReady is what /readyz reports before the plugin is registered.
var ErrNotReady = errors.New("not registered with the kubelet yet")

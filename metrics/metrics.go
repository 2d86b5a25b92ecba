// Package metrics exposes gpublocks' Prometheus metrics (DESIGN §7), plus
// the /healthz and /readyz probes, over one HTTP listener.
//
// State that already lives in the daemon (devices per resource and health,
// GPU shapes, the config status) is read at scrape time through a Source,
// so it can never drift from what the kubelet is served. Events (XIDs,
// Allocate calls) are counted as they happen; Allocate's path is kept cheap:
// its counters and histogram are resolved once per resource, and each call
// is a map lookup and a few atomic updates.
//
// The metrics are written in the Prometheus text format (0.0.4) by the
// small writer in expfmt.go, not by prometheus/client_golang: the client
// library, its protobuf model and procfs cost every start of the plugin
// about a megabyte of resident memory and milliseconds of package
// initialisation, for a dozen series. Names, labels, help texts and the
// Go and process metrics are those client_golang wrote (the tests compare
// the two).
package metrics

import (
	"errors"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
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

// MigLayout is one GPU whose config rule gives a MIG layout (DESIGN §10).
type MigLayout struct {
	Index   int
	UUID    string
	Pending bool // the GPU does not hold the layout yet (it waits, or failed)
}

// Snapshot is what the daemon serves at scrape time.
type Snapshot struct {
	Resources  []Resource
	GPUs       []GPU
	Config     Config
	MigLayouts []MigLayout
}

// Source returns the current snapshot; it is called once per scrape.
type Source func() Snapshot

// Metrics holds the event-driven metrics and the Source of the rest.
type Metrics struct {
	src Source // nil: no state metrics

	mu     sync.Mutex // guards the event counters below
	xids   map[[4]string]uint64
	ecc    map[[2]string]uint64
	probes map[[2]string]uint64

	xidCodes map[uint64]string // codes with an xid label value of their own; under mu
	xidExtra int               // codes in xidCodes beyond KnownXIDs; under mu

	hot   atomic.Pointer[map[string]*allocChildren] // copy-on-write
	hotMu sync.Mutex                                // serialises writers of hot

	// writeErrors counts scrapes whose response could not be written
	// (promhttp_metric_handler_errors_total{cause="encoding"}).
	writeErrors atomic.Uint64
}

// allocChildren are one resource's Allocate counters and latency
// histogram.
type allocChildren struct {
	ok, failed atomic.Uint64
	// count is bumped before an observation's bucket and read after the
	// buckets, so a scrape's +Inf bucket never falls below another bucket.
	count   atomic.Uint64
	sumBits atomic.Uint64   // float64 bits of the sum of observations
	buckets []atomic.Uint64 // per AllocateBuckets bound, not cumulative
}

// New builds the metrics, reading served state from src (nil: none).
func New(src Source) *Metrics {
	m := &Metrics{
		src:      src,
		xids:     map[[4]string]uint64{},
		ecc:      map[[2]string]uint64{},
		probes:   map[[2]string]uint64{},
		xidCodes: make(map[uint64]string, len(KnownXIDs)+MaxXIDCodes),
	}
	for _, x := range KnownXIDs {
		m.xidCodes[x] = strconv.FormatUint(x, 10)
	}
	empty := map[string]*allocChildren{}
	m.hot.Store(&empty)
	return m
}

// Allocate counts one Allocate call on resource that took took and failed
// with err (nil on success). It is on the hot path: after the first call
// per resource it formats no labels and allocates nothing.
func (m *Metrics) Allocate(resource string, took time.Duration, err error) {
	c := (*m.hot.Load())[resource]
	if c == nil {
		c = m.children(resource)
	}
	if err != nil {
		c.failed.Add(1)
	} else {
		c.ok.Add(1)
	}
	v := took.Seconds()
	c.count.Add(1)
	for {
		old := c.sumBits.Load()
		if c.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			break
		}
	}
	// The first bound ≥ v; beyond the last, only +Inf (count) holds it.
	if i := sort.SearchFloat64s(AllocateBuckets, v); i < len(c.buckets) {
		c.buckets[i].Add(1)
	}
}

// children creates and publishes resource's Allocate metrics.
func (m *Metrics) children(resource string) *allocChildren {
	m.hotMu.Lock()
	defer m.hotMu.Unlock()
	old := *m.hot.Load()
	if c := old[resource]; c != nil {
		return c
	}
	c := &allocChildren{buckets: make([]atomic.Uint64, len(AllocateBuckets))}
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
	m.mu.Lock()
	defer m.mu.Unlock()
	m.xids[[4]string{strconv.Itoa(gpu), uuid, m.xidLabelLocked(xid), strconv.FormatBool(ignored)}]++
}

// xidLabelLocked is the xid label value for code: its own for KnownXIDs
// and the first MaxXIDCodes other codes seen, XIDOther after that.
func (m *Metrics) xidLabelLocked(code uint64) string {
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
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ecc[[2]string{strconv.Itoa(gpu), uuid}]++
}

// ProbeFailure counts one GPU marked unhealthy by a failed probe.
func (m *Metrics) ProbeFailure(gpu int, uuid string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probes[[2]string{strconv.Itoa(gpu), uuid}]++
}

// ErrNotReady is what /readyz reports before the plugin is registered.
var ErrNotReady = errors.New("not registered with the kubelet yet")

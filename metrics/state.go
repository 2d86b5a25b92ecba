package metrics

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

const (
	counter = "counter"
	gauge   = "gauge"
)

func name(n string) string { return Namespace + "_" + n }

// families gathers every family for one scrape: the served state (read
// once from the Source), the event counters, Allocate's metrics, and the
// Go runtime's and the process's.
func (m *Metrics) families() []family {
	fams := m.stateFamilies()
	fams = append(fams, m.eventFamilies()...)
	fams = append(fams, m.allocFamilies()...)
	fams = append(fams, goFamilies()...)
	fams = append(fams, processFamilies()...)
	fams = append(fams, family{
		name: "promhttp_metric_handler_errors_total",
		help: "Total number of internal errors encountered by the promhttp metric handler.",
		typ:  counter,
		series: []series{
			{labels: []label{{"cause", "encoding"}}, value: float64(m.writeErrors.Load())},
			{labels: []label{{"cause", "gathering"}}, value: 0},
		},
	})
	return fams
}

// stateFamilies turns the daemon's snapshot into gauges.
func (m *Metrics) stateFamilies() []family {
	if m.src == nil {
		return nil
	}
	s := m.src()
	devices := family{name: name("devices"), typ: gauge,
		help: "Devices offered to the kubelet, by resource and health (healthy, unhealthy)."}
	for _, r := range s.Resources {
		devices.series = append(devices.series,
			series{labels: []label{{"resource", r.Name}, {"health", Healthy}}, value: float64(r.Healthy)},
			series{labels: []label{{"resource", r.Name}, {"health", Unhealthy}}, value: float64(r.Unhealthy)})
	}
	shape := family{name: name("gpu_shape"), typ: gauge,
		help: "Always 1: the shape each GPU is offered in (whole, mig, blocks, none)."}
	health := family{name: name("gpu_healthy"), typ: gauge,
		help: "1 when the GPU has no GPU-wide fault, 0 while it is unhealthy (MIG-scoped faults show in gpublocks_devices)."}
	for _, g := range s.GPUs {
		idx := strconv.Itoa(g.Index)
		shape.series = append(shape.series, series{labels: []label{{"gpu", idx}, {"uuid", g.UUID}, {"model", g.Model}, {"shape", g.Shape}}, value: 1})
		health.series = append(health.series, series{labels: []label{{"gpu", idx}, {"uuid", g.UUID}}, value: boolValue(g.Healthy)})
	}
	migPending := family{name: name("mig_layout_pending"), typ: gauge,
		help: "1 while a GPU waits for the MIG layout its config rule asks for (devices allocated, processes running, or a failed attempt), 0 once it holds it."}
	for _, l := range s.MigLayouts {
		migPending.series = append(migPending.series, series{labels: []label{{"gpu", strconv.Itoa(l.Index)}, {"uuid", l.UUID}}, value: boolValue(l.Pending)})
	}
	return []family{
		devices, shape, health, migPending,
		{name: name("config_generation"), typ: gauge,
			help:   "Generation of the config in force; bumped on every applied change.",
			series: []series{{labels: []label{{"config", s.Config.Name}}, value: float64(s.Config.Generation)}}},
		{name: name("config_errors_total"), typ: counter,
			help:   "Configs rejected since start; the last good config keeps serving.",
			series: []series{{value: float64(s.Config.Errors)}}},
		{name: name("config_valid"), typ: gauge,
			help:   "1 when the last config load succeeded, 0 when it was rejected.",
			series: []series{{value: boolValue(s.Config.Valid)}}},
	}
}

// eventFamilies are the XID, ECC and probe counters.
func (m *Metrics) eventFamilies() []family {
	m.mu.Lock()
	defer m.mu.Unlock()
	return []family{
		{name: name("xid_events_total"), typ: counter,
			help:   "NVML XID events by GPU and code; ignored=\"true\" for XIDs on the ignore list (or with health monitoring disabled), which change no device's health.",
			series: labelled([]string{"gpu", "uuid", "xid", "ignored"}, m.xids)},
		{name: name("ecc_double_bit_events_total"), typ: counter,
			help:   "NVML double-bit ECC error events by GPU.",
			series: labelled([]string{"gpu", "uuid"}, m.ecc)},
		{name: name("probe_failures_total"), typ: counter,
			help:   "GPUs marked unhealthy because an NVML probe failed (no event support, or a lost GPU NVML did not name).",
			series: labelled([]string{"gpu", "uuid"}, m.probes)},
	}
}

// allocFamilies are Allocate's counters and latency histogram.
func (m *Metrics) allocFamilies() []family {
	hot := *m.hot.Load()
	allocs := family{name: name("allocations_total"), typ: counter,
		help: "Allocate calls by resource and result (ok, error)."}
	type hist struct {
		resource string
		buckets  []uint64 // cumulative
		count    uint64
		sum      float64
	}
	var hists []hist
	for r, c := range hot {
		// Both results have a series from the resource's first call on,
		// as with client_golang's vector children.
		allocs.series = append(allocs.series,
			series{labels: []label{{"resource", r}, {"result", "ok"}}, value: float64(c.ok.Load())},
			series{labels: []label{{"resource", r}, {"result", "error"}}, value: float64(c.failed.Load())})
		// Buckets first, then the sum, then the count: Allocate bumps them
		// in the opposite order, so +Inf (the count) is never below a
		// bound's cumulative count.
		h := hist{resource: r, buckets: make([]uint64, len(c.buckets))}
		var cum uint64
		for i := range c.buckets {
			cum += c.buckets[i].Load()
			h.buckets[i] = cum
		}
		h.sum = math.Float64frombits(c.sumBits.Load())
		h.count = max(c.count.Load(), cum)
		hists = append(hists, h)
	}
	durations := family{name: name("allocate_duration_seconds"), typ: "histogram",
		help: "Time to answer one Allocate call, by resource."}
	if len(hists) > 0 {
		durations.write = func(w *textWriter) {
			slices.SortFunc(hists, func(a, b hist) int { return strings.Compare(a.resource, b.resource) })
			for _, h := range hists {
				res := label{"resource", h.resource}
				for i, le := range AllocateBuckets {
					w.sample(durations.name+"_bucket", []label{res, {"le", formatFloat(le)}}, formatUint(h.buckets[i]))
				}
				w.sample(durations.name+"_bucket", []label{res, {"le", "+Inf"}}, formatUint(h.count))
				w.sample(durations.name+"_sum", []label{res}, formatFloat(h.sum))
				w.sample(durations.name+"_count", []label{res}, formatUint(h.count))
			}
		}
	}
	return []family{allocs, durations}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

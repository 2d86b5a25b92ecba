package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector turns a Snapshot into gauges at scrape time.
type stateCollector struct {
	src       Source
	devices   *prometheus.Desc
	shape     *prometheus.Desc
	gpuHealth *prometheus.Desc
	cfgGen    *prometheus.Desc
	cfgErrors *prometheus.Desc
	cfgValid  *prometheus.Desc
}

func newStateCollector(src Source) *stateCollector {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	return &stateCollector{
		src: src,
		devices: prometheus.NewDesc(name("devices"),
			"Devices offered to the kubelet, by resource and health (healthy, unhealthy).",
			[]string{"resource", "health"}, nil),
		shape: prometheus.NewDesc(name("gpu_shape"),
			"Always 1: the shape each GPU is offered in (whole, mig, blocks, none).",
			[]string{"gpu", "uuid", "model", "shape"}, nil),
		gpuHealth: prometheus.NewDesc(name("gpu_healthy"),
			"1 when the GPU has no GPU-wide fault, 0 while it is unhealthy (MIG-scoped faults show in gpublocks_devices).",
			[]string{"gpu", "uuid"}, nil),
		cfgGen: prometheus.NewDesc(name("config_generation"),
			"Generation of the config in force; bumped on every applied change.",
			[]string{"config"}, nil),
		cfgErrors: prometheus.NewDesc(name("config_errors_total"),
			"Configs rejected since start; the last good config keeps serving.",
			nil, nil),
		cfgValid: prometheus.NewDesc(name("config_valid"),
			"1 when the last config load succeeded, 0 when it was rejected.",
			nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.devices, c.shape, c.gpuHealth, c.cfgGen, c.cfgErrors, c.cfgValid} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src()
	for _, r := range s.Resources {
		ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(r.Healthy), r.Name, Healthy)
		ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(r.Unhealthy), r.Name, Unhealthy)
	}
	for _, g := range s.GPUs {
		idx := strconv.Itoa(g.Index)
		ch <- prometheus.MustNewConstMetric(c.shape, prometheus.GaugeValue, 1, idx, g.UUID, g.Model, g.Shape)
		ch <- prometheus.MustNewConstMetric(c.gpuHealth, prometheus.GaugeValue, boolValue(g.Healthy), idx, g.UUID)
	}
	ch <- prometheus.MustNewConstMetric(c.cfgGen, prometheus.GaugeValue, float64(s.Config.Generation), s.Config.Name)
	ch <- prometheus.MustNewConstMetric(c.cfgErrors, prometheus.CounterValue, float64(s.Config.Errors))
	ch <- prometheus.MustNewConstMetric(c.cfgValid, prometheus.GaugeValue, boolValue(s.Config.Valid))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

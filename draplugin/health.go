package draplugin

import (
	"context"
	"slices"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// healthResend is how often WatchHealthStatus repeats an unchanged report.
// The kubelet treats a device's health as unknown when it has not been
// reported for 30 s (its default lease, which we keep); a third of that
// leaves room for a slow node.
const healthResend = 10 * time.Second

// WatchHealthStatus implements kubeletplugin.DRAPlugin: the kubelet's
// per-device health stream, which it shows in the status of the pods
// using the devices. Health is the published pool's: a device with the
// unhealthy taint is Unhealthy (message: the taint's value, e.g. xid-48),
// every other published device Healthy. A report of every published device
// goes out at once, again after each Publish that changes a device's
// health, and every healthResend in between, until ctx ends.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	resend := time.NewTicker(healthResend)
	defer resend.Stop()
	for {
		report, changed := d.healthReport()
		select {
		case <-ctx.Done():
			return nil
		case reports <- report:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-resend.C:
		}
	}
}

// healthReport is the health of every published device, sorted by name,
// and a channel closed when it next changes.
func (d *Driver) healthReport() (kubeletplugin.DeviceHealthReport, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.devices))
	for name := range d.devices {
		names = append(names, name)
	}
	slices.Sort(names)
	report := kubeletplugin.DeviceHealthReport{Devices: make([]kubeletplugin.DeviceHealth, len(names))}
	for i, name := range names {
		p := d.devices[name]
		h := kubeletplugin.DeviceHealth{
			PoolName: d.opts.NodeName, DeviceName: name,
			Health: kubeletplugin.HealthStatusHealthy, LastUpdated: d.healthAt,
		}
		if p.unhealthy != "" {
			h.Health, h.Message = kubeletplugin.HealthStatusUnhealthy, p.unhealthy
		}
		report.Devices[i] = h
	}
	return report, d.healthChanged
}

// setDevices publishes a new device set to Prepare and to the health
// watchers (who are woken only when some device's health changed). The
// caller holds mu.
func (d *Driver) setDevices(devices map[string]publishedDevice) {
	changed := len(devices) != len(d.devices)
	for name, p := range devices {
		old, ok := d.devices[name]
		changed = changed || !ok || old.unhealthy != p.unhealthy
	}
	d.devices = devices
	if changed {
		d.healthAt = time.Now()
		close(d.healthChanged)
		d.healthChanged = make(chan struct{})
	}
}

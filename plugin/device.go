package plugin

import (
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// NewDevice builds a kubelet device with its health and, when numaNode is
// known (>= 0), a NUMA topology hint for the kubelet's topology manager.
func NewDevice(id string, healthy bool, numaNode int) *pluginapi.Device {
	d := &pluginapi.Device{ID: id, Health: pluginapi.Healthy}
	if !healthy {
		d.Health = pluginapi.Unhealthy
	}
	if numaNode >= 0 {
		d.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(numaNode)}}}
	}
	return d
}

package plugin

import (
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// A Resource is one kubelet resource name served by one plugin socket, as a
// snapshot: implementations are immutable, and every change of devices or of
// their health is a new Resource handed to Manager.Update. Handlers may be
// called concurrently from many gRPC streams.
type Resource interface {
	// Name is the fully qualified resource name, e.g. "nvidia.com/gpu".
	Name() string
	// Devices is the full device list with health and topology. Callers must
	// not modify it.
	Devices() []*pluginapi.Device
	// Prefer answers GetPreferredAllocation for one container: size IDs out of
	// available, including every ID of mustInclude. available may hold IDs
	// the resource no longer serves (the kubelet's view can lag a re-plan):
	// they must be ignored, never returned.
	Prefer(available, mustInclude []string, size int) ([]string, error)
	// Allocate answers Allocate for one container. Errors should be gRPC
	// status errors (codes.InvalidArgument for bad ID sets).
	Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error)
}

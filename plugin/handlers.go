package plugin

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// This file is the gRPC face of one resource: the five DevicePlugin methods
// the kubelet calls. Every handler reads the resource through one atomic
// snapshot load and never takes a lock, so Update never stalls an Allocate.

// pluginOptions is what every resource tells the kubelet: ask us for
// preferred allocations (blocks and MIG placement depend on it), and no
// PreStartContainer round trip.
var pluginOptions = &pluginapi.DevicePluginOptions{
	PreStartRequired:                false,
	GetPreferredAllocationAvailable: true,
}

// GetDevicePluginOptions implements pluginapi.DevicePluginServer.
func (s *server) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return pluginOptions, nil
}

// ListAndWatch implements pluginapi.DevicePluginServer: it sends the full
// device list at once and again after every change. A stream that falls
// behind a burst of updates skips straight to the newest list, because each
// message replaces the previous one on the kubelet's side.
func (s *server) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	ctx := stream.Context()
	log := s.log.WithValues("method", "ListAndWatch")
	log.V(2).Info("stream opened")
	defer log.V(2).Info("stream closed")
	st := s.openStream()
	defer s.closeStream(st)
	for {
		snap := s.snap.Load()
		if err := stream.Send(snap.list); err != nil {
			return err
		}
		s.sent(st, snap)
		log.V(4).Info("sent device list", "devices", len(snap.list.Devices))
		select {
		case <-snap.stale:
		case <-ctx.Done():
			return nil
		}
	}
}

// GetPreferredAllocation implements pluginapi.DevicePluginServer: it checks
// each container request against the current snapshot and lets the Resource
// choose.
func (s *server) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	snap := s.snap.Load()
	if snap.res == nil {
		// Dropped from the layout: there is nothing to choose from, and no
		// Resource to ask.
		err := fmt.Errorf("resource %q %w", s.name, ErrNoDevices)
		s.log.Error(err, "request rejected", "method", "GetPreferredAllocation")
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	resp := &pluginapi.PreferredAllocationResponse{
		ContainerResponses: make([]*pluginapi.ContainerPreferredAllocationResponse, len(req.GetContainerRequests())),
	}
	for i, cr := range req.GetContainerRequests() {
		available, must, size := cr.GetAvailableDeviceIDs(), cr.GetMustIncludeDeviceIDs(), int(cr.GetAllocationSize())
		// Available IDs are not checked: a re-plan may have just replaced
		// the snapshot the kubelet's list came from, and refusing would fail
		// admission where ignoring the stale IDs serves the pod. Resources
		// ignore IDs they do not serve (and checking 800 blocks would cost
		// ~10 µs a call). Must-include IDs are the kubelet's firm demands.
		if len(must) > 0 {
			if err := snap.check(s.name, must, true); err != nil {
				return nil, s.reject("GetPreferredAllocation", err)
			}
		}
		if size < 1 || size > len(available) || len(must) > size {
			return nil, s.reject("GetPreferredAllocation", fmt.Errorf(
				"resource %q: %w: allocation size %d with %d available and %d required devices",
				s.name, ErrBadRequest, size, len(available), len(must)))
		}
		ids, err := snap.res.Prefer(available, must, size)
		if err != nil {
			return nil, s.resourceError("GetPreferredAllocation", err)
		}
		// A Resource's answer goes to the kubelet as is: one that names a
		// device twice (or one the resource does not offer) is a bug to
		// report, not a preference to pass on.
		if len(ids) > 0 && !snap.valid(ids, true) {
			return nil, s.resourceError("GetPreferredAllocation", fmt.Errorf("chose an invalid allocation: %w",
				snap.check(s.name, ids, true)))
		}
		resp.ContainerResponses[i] = &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids}
	}
	return resp, nil
}

// Allocate implements pluginapi.DevicePluginServer: one response per
// container request, in order. Unknown or repeated IDs, and a device named
// by two containers, are refused with codes.InvalidArgument before the
// Resource sees them.
func (s *server) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (resp *pluginapi.AllocateResponse, err error) {
	if s.onAllocate != nil {
		start := time.Now()
		defer func() { s.onAllocate(s.name, time.Since(start), err) }()
	}
	snap := s.snap.Load()
	crs := req.GetContainerRequests()
	if len(crs) > 1 {
		// Several containers are checked together, before any is
		// allocated: no device may go to two of them.
		if err := snap.checkContainers(s.name, crs); err != nil {
			return nil, s.reject("Allocate", err)
		}
	}
	resp = &pluginapi.AllocateResponse{
		ContainerResponses: make([]*pluginapi.ContainerAllocateResponse, len(crs)),
	}
	for i, cr := range crs {
		ids := cr.GetDevicesIds()
		if len(crs) == 1 {
			if err := snap.check(s.name, ids, true); err != nil {
				return nil, s.reject("Allocate", err)
			}
		}
		// snap.res is non-nil here: a dropped resource knows no IDs.
		r, err := snap.res.Allocate(ids)
		if err != nil {
			return nil, s.resourceError("Allocate", err)
		}
		if r == nil {
			r = &pluginapi.ContainerAllocateResponse{}
		}
		resp.ContainerResponses[i] = r
	}
	return resp, nil
}

// PreStartContainer implements pluginapi.DevicePluginServer. The kubelet
// never calls it (PreStartRequired is false); it answers anyway.
func (s *server) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// reject turns a request-validation error into codes.InvalidArgument.
func (s *server) reject(method string, err error) error {
	s.log.Error(err, "request rejected", "method", method)
	return status.Error(codes.InvalidArgument, err.Error())
}

// resourceError passes a Resource's gRPC status on, prefixed with the
// resource name; any other error becomes codes.Internal.
func (s *server) resourceError(method string, err error) error {
	s.log.Error(err, "resource refused request", "method", method)
	if st, ok := status.FromError(err); ok {
		return status.Errorf(st.Code(), "resource %q: %s", s.name, st.Message())
	}
	return status.Errorf(codes.Internal, "resource %q: %v", s.name, err)
}

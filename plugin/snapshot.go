package plugin

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// stackDevices is the device count up to which check's duplicate bitset
// lives on the stack; only larger resources allocate one per request.
const stackDevices = 1024

// A snapshot is everything a gRPC handler needs about one resource at one
// moment. It is immutable once published: handlers load it through an
// atomic pointer and never lock. Everything derived from the device list is
// computed here, at Update time, so the hot paths do no work but lookups.
type snapshot struct {
	// res answers Prefer and Allocate; nil once the resource has been dropped
	// from the layout (the snapshot then offers no devices).
	res Resource
	// ids maps every offered device ID to its position in list.Devices, so
	// that check finds repeats with a bitset instead of a second map.
	ids map[string]int32
	// list is the ListAndWatch message, shared by every stream.
	list *pluginapi.ListAndWatchResponse
	// stale is closed when a snapshot with a different device list replaces
	// this one. Snapshots whose device lists are equal share the channel, so
	// streams are woken only by changes the kubelet can see.
	stale chan struct{}
}

// newSnapshot indexes res (nil for a dropped resource). It fails with
// ErrInvalidResource when two devices share an ID.
func newSnapshot(res Resource) (*snapshot, error) {
	s := &snapshot{res: res, list: &pluginapi.ListAndWatchResponse{}, stale: make(chan struct{})}
	if res == nil {
		s.ids = map[string]int32{}
		return s, nil
	}
	devs := res.Devices()
	s.ids = make(map[string]int32, len(devs))
	for i, d := range devs {
		if d == nil {
			return nil, fmt.Errorf("%w: %q: nil device", ErrInvalidResource, res.Name())
		}
		if _, dup := s.ids[d.ID]; dup {
			return nil, fmt.Errorf("%w: %q: device ID %q listed twice", ErrInvalidResource, res.Name(), d.ID)
		}
		s.ids[d.ID] = int32(i)
	}
	s.list.Devices = devs
	return s, nil
}

// diff reports whether s, replacing old, drops device IDs old offers and
// whether it adds IDs old does not offer.
func (s *snapshot) diff(old *snapshot) (loses, gains bool) {
	for id := range old.ids {
		if _, ok := s.ids[id]; !ok {
			loses = true
			break
		}
	}
	for id := range s.ids {
		if _, ok := old.ids[id]; !ok {
			gains = true
			break
		}
	}
	return loses, gains
}

// within returns s restricted to the devices old offers too: what a
// resource that both loses and gains devices streams while the devices it
// gains may still be offered elsewhere (see Manager.Update).
func (s *snapshot) within(old *snapshot) *snapshot {
	out := &snapshot{res: s.res, ids: map[string]int32{}, list: &pluginapi.ListAndWatchResponse{}, stale: make(chan struct{})}
	for _, d := range s.list.Devices {
		if _, ok := old.ids[d.ID]; ok {
			out.ids[d.ID] = int32(len(out.list.Devices))
			out.list.Devices = append(out.list.Devices, d)
		}
	}
	return out
}

// sameDevices reports whether s and o would send the kubelet the same list.
func (s *snapshot) sameDevices(o *snapshot) bool {
	return proto.Equal(s.list, o.list)
}

// valid reports whether every ID is offered and, with wantUnique, none is
// repeated. It allocates nothing for resources of up to stackDevices
// devices: repeats are found with a bitset over the device positions.
func (s *snapshot) valid(ids []string, wantUnique bool) bool {
	if !wantUnique || len(ids) == 1 {
		for _, id := range ids {
			if _, ok := s.ids[id]; !ok {
				return false
			}
		}
		return true
	}
	var buf [stackDevices / 64]uint64
	seen := buf[:]
	if n := len(s.list.Devices); n > stackDevices {
		seen = make([]uint64, (n+63)/64)
	}
	for _, id := range ids {
		i, ok := s.ids[id]
		if !ok {
			return false
		}
		w, bit := i>>6, uint64(1)<<(i&63)
		if seen[w]&bit != 0 {
			return false
		}
		seen[w] |= bit
	}
	return true
}

// check validates one container's ID list for resource name: not empty,
// every ID known and none repeated. The fast path allocates nothing; the
// error path names the offending IDs.
func (s *snapshot) check(name string, ids []string, wantUnique bool) error {
	if len(ids) == 0 {
		return fmt.Errorf("resource %q: %w: no device IDs", name, ErrBadRequest)
	}
	if s.valid(ids, wantUnique) {
		return nil
	}
	var unknown, dups []string
	seen := make(map[string]int, len(ids))
	for _, id := range ids {
		seen[id]++
		if _, ok := s.ids[id]; !ok && seen[id] == 1 {
			unknown = append(unknown, id)
		}
		if wantUnique && seen[id] == 2 {
			dups = append(dups, id)
		}
	}
	switch {
	case len(unknown) > 0 && len(dups) > 0:
		return fmt.Errorf("resource %q: %w: %s; %w: %s", name,
			ErrUnknownDevice, QuoteIDs(unknown), ErrDuplicateDevice, QuoteIDs(dups))
	case len(unknown) > 0:
		return fmt.Errorf("resource %q: %w: %s", name, ErrUnknownDevice, QuoteIDs(unknown))
	default:
		return fmt.Errorf("resource %q: %w: %s", name, ErrDuplicateDevice, QuoteIDs(dups))
	}
}

// checkContainers validates the ID lists of several containers of one
// Allocate call: each as check does, and no device in two of them. The
// kubelet sends one container per call, but the API allows several, and
// the same device given to two containers would be one GPU shared without
// either knowing. Like check, it allocates nothing on success for resources
// of up to stackDevices devices.
func (s *snapshot) checkContainers(name string, crs []*pluginapi.ContainerAllocateRequest) error {
	var buf [stackDevices / 64]uint64
	seen := buf[:]
	if n := len(s.list.Devices); n > stackDevices {
		seen = make([]uint64, (n+63)/64)
	}
	for c, cr := range crs {
		ids := cr.GetDevicesIds()
		if err := s.check(name, ids, true); err != nil {
			return fmt.Errorf("container request %d: %w", c, err)
		}
		for _, id := range ids {
			i := s.ids[id]
			w, bit := i>>6, uint64(1)<<(i&63)
			if seen[w]&bit != 0 {
				return fmt.Errorf("resource %q: %w: device %s is requested by container requests %d and %d; "+
					"a device serves one container", name, ErrDuplicateDevice, QuoteID(id), firstWith(crs[:c], id), c)
			}
			seen[w] |= bit
		}
	}
	return nil
}

// firstWith returns the index of the first container request naming id.
func firstWith(crs []*pluginapi.ContainerAllocateRequest, id string) int {
	for c, cr := range crs {
		for _, x := range cr.GetDevicesIds() {
			if x == id {
				return c
			}
		}
	}
	return -1
}

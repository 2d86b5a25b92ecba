package sim

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrNoListener means an injected event reached no event set: nobody has
// registered for that event type on that GPU yet (or every set was freed).
// Real NVML drops such events too; tests retry until the monitor listens.
var ErrNoListener = errors.New("no event set listens for this event")

// SupportedEventTypes are the NVML event types every simulated GPU supports.
const SupportedEventTypes = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError

// XIDGPULost is the XID the driver reports when a GPU fell off the bus.
const XIDGPULost = 79

// eventQueue is how many undelivered events one set holds; more are
// dropped, as NVML's own bounded queue does.
const eventQueue = 256

// events is the simulation's event machinery: the live event sets and the
// GPUs marked lost. Separate from Backend.mu so that injecting an event
// never waits on MIG changes.
type events struct {
	mu   sync.Mutex
	sets map[*eventSet]struct{}
	lost map[int]bool // GPU index → lost
}

// eventSet is a working nvml.EventSet: RegisterEvents adds (GPU, types) to
// it, InjectXID queues into it, Wait takes from the queue. It is written
// from scratch rather than on the mock's EventSet, which records every call
// and so would grow for as long as a monitor waits.
type eventSet struct {
	nvml.EventSet // unimplemented methods panic, as the mock's do
	b             *Backend
	queue         chan nvml.EventData
	freed         chan struct{}
	once          sync.Once

	mu    sync.Mutex
	types map[int]uint64 // GPU index → registered event types
}

// installEvents fills in the calls for event sets and lost GPUs; build calls
// it from completeServer.
func (b *Backend) installEvents() {
	b.ev.sets = map[*eventSet]struct{}{}
	b.ev.lost = map[int]bool{}
	b.srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		s := &eventSet{b: b, queue: make(chan nvml.EventData, eventQueue), freed: make(chan struct{}), types: map[int]uint64{}}
		b.ev.mu.Lock()
		b.ev.sets[s] = struct{}{}
		b.ev.mu.Unlock()
		return s, nvml.SUCCESS
	}
	b.srv.EventSetWaitFunc = func(set nvml.EventSet, ms uint32) (nvml.EventData, nvml.Return) { return set.Wait(ms) }
	b.srv.EventSetFreeFunc = func(set nvml.EventSet) nvml.Return { return set.Free() }
	for _, g := range b.gpus {
		d, index := g.dev, g.index
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return SupportedEventTypes, nvml.SUCCESS }
		d.RegisterEventsFunc = func(types uint64, set nvml.EventSet) nvml.Return {
			s, ok := set.(*eventSet)
			if !ok {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			if types&^SupportedEventTypes != 0 {
				return nvml.ERROR_NOT_SUPPORTED
			}
			if b.Lost(index) {
				return nvml.ERROR_GPU_IS_LOST
			}
			s.mu.Lock()
			s.types[index] |= types
			s.mu.Unlock()
			return nvml.SUCCESS
		}
		memory := d.GetMemoryInfoFunc
		d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			if b.Lost(index) {
				return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST
			}
			return memory()
		}
	}
}

// Wait returns the next event, or ERROR_TIMEOUT after ms milliseconds.
func (s *eventSet) Wait(ms uint32) (nvml.EventData, nvml.Return) {
	select {
	case ev := <-s.queue:
		return ev, nvml.SUCCESS
	default:
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case ev := <-s.queue:
		return ev, nvml.SUCCESS
	case <-s.freed:
		return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
	case <-t.C:
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	}
}

// Free releases the set; a Wait in progress returns at once.
func (s *eventSet) Free() nvml.Return {
	s.once.Do(func() {
		s.b.ev.mu.Lock()
		delete(s.b.ev.sets, s)
		s.b.ev.mu.Unlock()
		close(s.freed)
	})
	return nvml.SUCCESS
}

// deliver queues ev in every set registered for its type on GPU index and
// says how many took it.
func (b *Backend) deliver(index int, ev nvml.EventData) int {
	b.ev.mu.Lock()
	defer b.ev.mu.Unlock()
	n := 0
	for s := range b.ev.sets {
		s.mu.Lock()
		want := s.types[index]&ev.EventType != 0
		s.mu.Unlock()
		if !want {
			continue
		}
		select {
		case s.queue <- ev:
			n++
		default: // queue full: dropped, as NVML drops on overflow
		}
	}
	return n
}

// InjectXID raises XID xid on GPU index as the driver would for a fault of
// the whole GPU (no GPU or compute instance). It returns an error wrapping
// ErrNoListener when no event set is registered for XIDs on that GPU.
func (b *Backend) InjectXID(index int, xid uint64) error {
	return b.InjectMigXID(index, nvml.GPU_INSTANCE_ID_ANY, nvml.COMPUTE_INSTANCE_ID_ANY, xid)
}

// InjectMigXID raises XID xid scoped to GPU instance gi and compute
// instance ci of GPU index (nvml.GPU_INSTANCE_ID_ANY /
// COMPUTE_INSTANCE_ID_ANY for none), the way NVML reports faults inside one
// MIG device.
func (b *Backend) InjectMigXID(index int, gi, ci uint32, xid uint64) error {
	return b.inject(index, nvml.EventTypeXidCriticalError, xid, gi, ci)
}

// InjectDoubleBitECC raises a double-bit ECC error event on GPU index.
func (b *Backend) InjectDoubleBitECC(index int) error {
	return b.inject(index, nvml.EventTypeDoubleBitEccError, 0, nvml.GPU_INSTANCE_ID_ANY, nvml.COMPUTE_INSTANCE_ID_ANY)
}

// InjectGPULost makes GPU index fall off the bus: from now on its probes
// (GetMemoryInfo, handle lookups of it and its MIG devices, RegisterEvents)
// fail with ERROR_GPU_IS_LOST, and XID 79 is raised. RestoreGPU undoes it.
// The lost state is set even when the XID reaches no listener.
func (b *Backend) InjectGPULost(index int) error {
	if err := b.checkIndex(index); err != nil {
		return err
	}
	b.ev.mu.Lock()
	b.ev.lost[index] = true
	b.ev.mu.Unlock()
	return b.InjectXID(index, XIDGPULost)
}

// RestoreGPU brings a lost GPU back (a reset that worked): probes pass
// again.
func (b *Backend) RestoreGPU(index int) error {
	if err := b.checkIndex(index); err != nil {
		return err
	}
	b.ev.mu.Lock()
	delete(b.ev.lost, index)
	b.ev.mu.Unlock()
	return nil
}

// Lost reports whether GPU index is lost.
func (b *Backend) Lost(index int) bool {
	b.ev.mu.Lock()
	defer b.ev.mu.Unlock()
	return b.ev.lost[index]
}

func (b *Backend) checkIndex(index int) error {
	if index < 0 || index >= len(b.gpus) {
		return fmt.Errorf("no simulated GPU %d (have %d)", index, len(b.gpus))
	}
	return nil
}

func (b *Backend) inject(index int, typ, data uint64, gi, ci uint32) error {
	if err := b.checkIndex(index); err != nil {
		return err
	}
	ev := nvml.EventData{Device: b.gpus[index].dev, EventType: typ, EventData: data, GpuInstanceId: gi, ComputeInstanceId: ci}
	if b.deliver(index, ev) == 0 {
		return fmt.Errorf("GPU %d: event type %d: %w", index, typ, ErrNoListener)
	}
	return nil
}

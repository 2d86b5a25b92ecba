package health

import (
	"context"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// timerLoop sleeps until the next deadline (a quiet period ending, a probe
// due, a recovered device to forget) and handles it, until ctx ends.
func (m *Monitor) timerLoop(ctx context.Context) {
	for {
		m.mu.Lock()
		next := m.nextLocked()
		m.mu.Unlock()
		var t clock.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			wait := next.Sub(m.opts.Clock.Now())
			if wait <= 0 {
				m.tick(ctx)
				continue
			}
			t = m.opts.Clock.NewTimer(wait)
			fire = t.C()
		}
		select {
		case <-ctx.Done():
		case <-m.wake:
		case <-fire:
			m.tick(ctx)
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// nextLocked is the earliest deadline, or zero when there is none.
func (m *Monitor) nextLocked() time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for _, f := range m.faults {
		earlier(f.next)
	}
	for _, e := range m.gpus {
		if e.probeOnly {
			if m.probeAt.IsZero() {
				m.probeAt = m.opts.Clock.Now().Add(m.opts.ProbeInterval)
			}
			earlier(m.probeAt)
			break
		}
	}
	return next
}

// candidate is a faulted key whose quiet period is over.
type candidate struct {
	key string
	gen int
	err error
}

// tick probes what is due and recovers what passes.
func (m *Monitor) tick(ctx context.Context) {
	logger := klog.FromContext(ctx)
	now := m.opts.Clock.Now()
	var due []candidate
	var watch []*gpuEntry // probe-only GPUs due for their periodic probe
	m.mu.Lock()
	for key, f := range m.faults {
		if f.next.After(now) {
			continue
		}
		if !f.unhealthy {
			delete(m.faults, key) // clean long enough: forget the backoff
			continue
		}
		due = append(due, candidate{key: key, gen: f.gen})
	}
	if !m.probeAt.IsZero() && !m.probeAt.After(now) {
		m.probeAt = time.Time{}
		for _, e := range m.gpus {
			if e.probeOnly && (m.faults[e.uuid] == nil || !m.faults[e.uuid].unhealthy) {
				watch = append(watch, e)
			}
		}
	}
	m.mu.Unlock()

	// Probe without the lock: NVML may be slow on a sick GPU.
	for i := range due {
		due[i].err = m.probe(due[i].key)
	}
	failed := map[*gpuEntry]error{}
	for _, e := range watch {
		if err := m.probe(e.uuid); err != nil {
			failed[e] = err
		}
	}

	changed := false
	m.mu.Lock()
	for _, c := range due {
		f := m.faults[c.key]
		if f == nil || f.gen != c.gen {
			continue // dropped, or faulted again while we probed
		}
		if c.err != nil {
			f.next = now.Add(m.opts.ProbeInterval)
			logger.Info("Quiet period over but probe fails; device stays unhealthy", "device", c.key, "err", c.err, "retryIn", m.opts.ProbeInterval)
			continue
		}
		f.unhealthy = false
		f.healthyAt = now
		f.next = now.Add(m.quietLocked(f))
		changed = true
		logger.Info("Device healthy again", "device", c.key, "after", f.reason, "quietPeriod", m.quietLocked(f))
	}
	var events []Event
	for e, err := range failed {
		if m.policy.Disabled {
			continue
		}
		reason := fmt.Sprintf("probe failed: %v", err)
		if m.faultLocked(e.uuid, reason, now) {
			changed = true
			logger.Info("Device unhealthy", "device", e.uuid, "gpu", e.index, "uuid", e.uuid, "reason", reason, "quietPeriod", m.quietLocked(m.faults[e.uuid]))
		}
		events = append(events, Event{GPU: e.index, UUID: e.uuid, Devices: []string{e.uuid}, Reason: reason})
	}
	m.mu.Unlock()
	if m.opts.OnEvent != nil {
		for _, ev := range events {
			m.opts.OnEvent(ev)
		}
	}
	if changed {
		m.publish()
	}
}

// probe checks that key (a GPU or MIG UUID) still answers NVML: a fresh
// handle by UUID that reports its memory. A MIG device's parent GPU must
// pass too.
func (m *Monitor) probe(key string) error {
	m.mu.Lock()
	parent := m.parent[key]
	m.mu.Unlock()
	keys := []string{key}
	if parent != "" {
		keys = append(keys, parent)
	}
	for _, k := range keys {
		h, ret := m.lib.DeviceGetHandleByUUID(k)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("%w: %s: getting handle: %w", ErrProbe, k, ret)
		}
		if _, ret := h.GetMemoryInfo(); ret != nvml.SUCCESS {
			return fmt.Errorf("%w: %s: reading memory info: %w", ErrProbe, k, ret)
		}
	}
	return nil
}

// probeAll probes every watched GPU now and marks those that fail, for when
// NVML reports a lost GPU without saying which.
func (m *Monitor) probeAll(ctx context.Context) {
	m.mu.Lock()
	if m.policy.Disabled {
		m.mu.Unlock()
		return
	}
	entries := make([]*gpuEntry, 0, len(m.gpus))
	for _, e := range m.gpus {
		entries = append(entries, e)
	}
	m.mu.Unlock()
	logger := klog.FromContext(ctx)
	changed := false
	for _, e := range entries {
		err := m.probe(e.uuid)
		if err == nil {
			continue
		}
		reason := fmt.Sprintf("GPU lost: %v", err)
		m.mu.Lock()
		turned := m.faultLocked(e.uuid, reason, m.opts.Clock.Now())
		m.mu.Unlock()
		if turned {
			changed = true
			logger.Info("Device unhealthy", "device", e.uuid, "gpu", e.index, "uuid", e.uuid, "reason", reason)
		}
		if m.opts.OnEvent != nil {
			m.opts.OnEvent(Event{GPU: e.index, UUID: e.uuid, Devices: []string{e.uuid}, Reason: reason})
		}
	}
	if changed {
		m.publish()
		m.poke()
	}
}

package blocks

import (
	"fmt"
	"math/bits"
	"strings"

	"github.com/gpublocks/gpublocks/plugin"
)

// blockSet is a set of block numbers of one GPU.
type blockSet [2]uint64

func (s *blockSet) add(n int32)              { s[n>>6] |= 1 << (n & 63) }
func (s *blockSet) has(n int) bool           { return s[n>>6]&(1<<(n&63)) != 0 }
func (s blockSet) len() int                  { return bits.OnesCount64(s[0]) + bits.OnesCount64(s[1]) }
func (s blockSet) minus(o blockSet) blockSet { return blockSet{s[0] &^ o[0], s[1] &^ o[1]} }

// gpuState is what Prefer learns about one GPU from its arguments.
type gpuState struct {
	free blockSet // available, or must-include
	must blockSet
}

// stackGPUs is how many GPUs Prefer and Allocate track without a heap
// allocation.
const stackGPUs = 16

// scratch returns one zeroed gpuState per GPU, in buf when it is big enough.
func (r *Resource) scratch(buf []gpuState) []gpuState {
	if len(r.gpus) > len(buf) {
		return make([]gpuState, len(r.gpus))
	}
	return buf[:len(r.gpus)]
}

// Prefer answers GetPreferredAllocation: size IDs out of available that obey
// the blocks rules and include every ID of mustInclude.
//
// For size ≤ 100 all IDs come from one GPU (the one holding mustInclude, if
// any): Binpack takes the GPU with the fewest free blocks that fits, Spread
// the most, ties going to the lowest GPU index. For size > 100, a multiple
// of 100, it takes size/100 GPUs whose 100 blocks are all free, lowest
// indices first. Within a GPU the lowest free block numbers are taken.
//
// available is the kubelet's truth about what is free; blocks of unhealthy
// GPUs and unknown IDs in it are ignored. A request that breaks the rules is
// an InvalidArgument error wrapping ErrInvalidRequest; one that no GPU can
// take now is a ResourceExhausted error wrapping ErrNoFit. Either makes the
// kubelet fail the pod's admission with the message.
func (r *Resource) Prefer(available, mustInclude []string, size int) ([]string, error) {
	if size <= 0 || (size > PerGPU && size%PerGPU != 0) {
		return nil, invalidf("cannot serve a request of %d blocks: ask for 1 to %d blocks of one GPU, "+
			"or a multiple of %d for whole GPUs", size, PerGPU, PerGPU)
	}
	var buf [stackGPUs]gpuState
	st := r.scratch(buf[:])

	mustGPUs := 0
	mustSlot := -1
	for _, id := range mustInclude {
		ref, ok := r.byID[id]
		if !ok {
			return nil, invalidf("the kubelet requires block %s, which this resource does not serve", plugin.QuoteID(id))
		}
		s := &st[ref.slot]
		if s.must.len() == 0 {
			mustGPUs++
			mustSlot = int(ref.slot)
		}
		s.must.add(ref.n)
		s.free.add(ref.n)
	}
	hint := int32(-1)
	for _, id := range available {
		ref, ok := r.lookup(id, hint)
		if !ok {
			continue
		}
		hint = ref.slot
		if r.gpus[ref.slot].healthy {
			st[ref.slot].free.add(ref.n)
		}
	}

	if size <= PerGPU {
		return r.preferOne(st, mustGPUs, mustSlot, size)
	}
	return r.preferWhole(st, mustGPUs, size)
}

// preferOne places size ≤ 100 blocks on one GPU.
func (r *Resource) preferOne(st []gpuState, mustGPUs, mustSlot, size int) ([]string, error) {
	if mustGPUs > 1 {
		counts := make([]int, len(st))
		var slots []int
		for i := range st {
			if counts[i] = st[i].must.len(); counts[i] > 0 {
				slots = append(slots, i)
			}
		}
		return nil, invalidf("cannot place %d blocks on one GPU: the kubelet requires %s "+
			"(blocks reused from an init container or aligned to a NUMA node); "+
			"blocks never span GPUs: use the topology manager policy none or ask for whole GPUs (multiples of %d)",
			size, joinCounts(r, slots, counts), PerGPU)
	}
	if mustGPUs == 1 {
		if m := st[mustSlot].must.len(); m > size {
			return nil, invalidf("the kubelet requires %d blocks of %s for a request of only %d",
				m, &r.gpus[mustSlot], size)
		}
	}
	best, bestFree := -1, 0
	for i := range st {
		if mustGPUs == 1 && i != mustSlot {
			continue
		}
		f := st[i].free.len()
		if f < size {
			continue
		}
		if best < 0 || (r.policy == Binpack && f < bestFree) || (r.policy == Spread && f > bestFree) {
			best, bestFree = i, f
		}
	}
	if best < 0 {
		return nil, r.noFit(st, size, mustSlot)
	}
	s := st[best]
	out := make([]string, 0, size)
	g := &r.gpus[best]
	for n := range PerGPU {
		if s.must.has(n) {
			out = append(out, g.ids[n])
		}
	}
	extra := s.free.minus(s.must)
	for n := 0; n < PerGPU && len(out) < size; n++ {
		if extra.has(n) {
			out = append(out, g.ids[n])
		}
	}
	return out, nil
}

// preferWhole places size/100 whole GPUs.
func (r *Resource) preferWhole(st []gpuState, mustGPUs, size int) ([]string, error) {
	want := size / PerGPU
	if mustGPUs > want {
		return nil, invalidf("the kubelet requires blocks of %d GPUs for a request of %d blocks (%d whole GPUs)",
			mustGPUs, size, want)
	}
	chosen := make([]int, 0, want)
	// GPUs holding required blocks first: they must be chosen, and whole.
	for i := range st {
		if st[i].must.len() == 0 {
			continue
		}
		if st[i].free.len() < PerGPU {
			return nil, r.noFit(st, size, i)
		}
		chosen = append(chosen, i)
	}
	for i := range st {
		if len(chosen) == want {
			break
		}
		if st[i].must.len() == 0 && st[i].free.len() == PerGPU {
			chosen = append(chosen, i)
		}
	}
	if len(chosen) < want {
		return nil, r.noFit(st, size, -1)
	}
	out := make([]string, 0, size)
	for _, i := range chosen {
		out = append(out, r.gpus[i].ids[:]...)
	}
	return out, nil
}

// noFit explains why no GPU takes the request: what was asked, the free
// blocks of every GPU, and what to do.
func (r *Resource) noFit(st []gpuState, size, mustSlot int) error {
	var b strings.Builder
	total, largest, whole := 0, 0, 0
	for i := range st {
		f := st[i].free.len()
		total += f
		largest = max(largest, f)
		if f == PerGPU {
			whole++
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", &r.gpus[i], f)
		if !r.gpus[i].healthy {
			b.WriteString(" (unhealthy)")
		}
	}
	if mustSlot >= 0 && size <= PerGPU {
		largest = st[mustSlot].free.len() // the only GPU the request can use
	}
	ask := fmt.Sprintf("%d blocks on one GPU", size)
	advice := fmt.Sprintf("ask for at most %d blocks", largest)
	if largest == 0 {
		advice = "wait for blocks to be released"
	}
	if size > PerGPU {
		ask = fmt.Sprintf("%d blocks (%d whole GPUs; %d completely free)", size, size/PerGPU, whole)
		advice = fmt.Sprintf("ask for at most %d blocks", max(whole*PerGPU, largest))
	}
	if mustSlot >= 0 {
		ask += fmt.Sprintf(" including blocks the kubelet requires on %s", &r.gpus[mustSlot])
	}
	return noFitf("cannot place %s: free blocks per GPU: %s; %d free in total. "+
		"Blocks never span GPUs: %s, wait for blocks of one GPU to be released, or let the pod run on another node "+
		"(the scheduler sees only the node total, see the docs on node-total scheduling)",
		ask, b.String(), total, advice)
}

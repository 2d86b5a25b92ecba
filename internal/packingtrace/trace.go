// Package packingtrace generates the container arrival traces that the
// packing benchmarks replay: the node-level blocks benchmark (blocks/) and
// the cluster-level DRA benchmark (dra/) use the same sizes and lifetimes,
// so their figures compare.
package packingtrace

import (
	"math"
	"math/rand/v2"
)

// BlocksPerGPU is one GPU's blocks.
const BlocksPerGPU = 100

// SizeMix is the share (in %) of each request size: mostly small
// inference-style containers, with a tail of large and whole-GPU ones.
var SizeMix = []struct{ Blocks, Weight int }{
	{10, 25}, {20, 20}, {25, 15}, {30, 15}, {50, 12}, {70, 7}, {100, 6},
}

// Arrival is one container: Size blocks for Life ticks.
type Arrival struct{ Size, Life int }

// Make returns n arrivals with exponential lifetimes whose mean makes the
// offered load (mean size × mean lifetime, at one arrival per tick) the
// given share of gpus GPUs' blocks. The same seed gives the same trace.
func Make(seed uint64, n int, load float64, gpus int) []Arrival {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	total, mean := 0, 0.0
	for _, s := range SizeMix {
		total += s.Weight
		mean += float64(s.Blocks * s.Weight)
	}
	mean /= float64(total)
	meanLife := load * float64(gpus) * BlocksPerGPU / mean
	trace := make([]Arrival, n)
	for i := range trace {
		w := rng.IntN(total)
		size := 0
		for _, s := range SizeMix {
			if w < s.Weight {
				size = s.Blocks
				break
			}
			w -= s.Weight
		}
		trace[i] = Arrival{Size: size, Life: max(1, int(math.Round(rng.ExpFloat64()*meanLife)))}
	}
	return trace
}

package blocks

import (
	"strconv"
	"strings"
)

// Environment variables a container holding blocks receives, in the device
// plugin's Allocate response and in DRA's per-claim CDI spec alike (DESIGN
// §6): both kubelet APIs call SetEnv, so the two can never disagree.
const (
	// EnvBlocks is the number of blocks the container got.
	EnvBlocks = "GPUBLOCKS_BLOCKS"
	// EnvGPUUUID is the UUID of the parent GPU; comma-joined in CUDA device
	// ordinal order when the container holds several GPUs.
	EnvGPUUUID = "GPUBLOCKS_GPU_UUID"
	// EnvMPSThreadPercentage caps the share of SMs under MPS: the number of
	// blocks, at most 100.
	EnvMPSThreadPercentage = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
	// EnvMPSMemLimit caps device memory under MPS, per CUDA device ordinal:
	// "0=<floor(memoryMiB×k/100)>M" for k ≤ 100 blocks of one GPU, and one
	// entry per GPU ("0=40960M,1=40960M", ordinals in EnvGPUUUID order)
	// for several.
	EnvMPSMemLimit = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
)

// A Share is the blocks of one GPU that a container holds.
type Share struct {
	UUID      string // the GPU's UUID
	MemoryMiB uint64 // the GPU's memory
	Blocks    int    // 1…PerGPU; PerGPU for a GPU held whole
}

// SetEnv sets the blocks environment in envs for a container holding
// shares, one per GPU, in CUDA device ordinal order (the order the
// container's GPUs enumerate in; callers use GPU index order):
//
//   - EnvBlocks: the sum of the blocks;
//   - EnvGPUUUID: the UUIDs, comma-joined;
//   - EnvMPSThreadPercentage: the smallest share's blocks (MPS applies one
//     percentage to every device of a client, so the smallest keeps each
//     GPU within its share);
//   - EnvMPSMemLimit: floor(memoryMiB×blocks/100) MiB per ordinal.
//
// Nothing is set for no shares.
func SetEnv(envs map[string]string, shares []Share) {
	switch len(shares) {
	case 0:
		return
	case 1:
		// The device plugin's Allocate path: one concatenation per value.
		s := &shares[0]
		envs[EnvBlocks] = strconv.Itoa(s.Blocks)
		envs[EnvGPUUUID] = s.UUID
		envs[EnvMPSThreadPercentage] = strconv.Itoa(min(s.Blocks, PerGPU))
		envs[EnvMPSMemLimit] = "0=" + strconv.FormatUint(memLimitMiB(s), 10) + "M"
		return
	}
	total, least := 0, PerGPU
	var uuids, lim strings.Builder
	for i := range shares {
		s := &shares[i]
		total += s.Blocks
		least = min(least, s.Blocks)
		if i > 0 {
			uuids.WriteByte(',')
			lim.WriteByte(',')
		}
		uuids.WriteString(s.UUID)
		lim.WriteString(strconv.Itoa(i))
		lim.WriteByte('=')
		lim.WriteString(strconv.FormatUint(memLimitMiB(s), 10))
		lim.WriteByte('M')
	}
	envs[EnvBlocks] = strconv.Itoa(total)
	envs[EnvGPUUUID] = uuids.String()
	envs[EnvMPSThreadPercentage] = strconv.Itoa(least)
	envs[EnvMPSMemLimit] = lim.String()
}

// memLimitMiB is the share's part of its GPU's memory, floored.
func memLimitMiB(s *Share) uint64 {
	return s.MemoryMiB * uint64(min(max(s.Blocks, 0), PerGPU)) / PerGPU
}

package blocks

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSetEnv(t *testing.T) {
	tests := map[string]struct {
		shares []Share
		want   map[string]string
	}{
		"no shares set nothing": {want: map[string]string{}},
		"30 blocks of a 40 GB GPU": {
			shares: []Share{{UUID: "GPU-a", MemoryMiB: 40960, Blocks: 30}},
			want: map[string]string{
				EnvBlocks: "30", EnvGPUUUID: "GPU-a",
				EnvMPSThreadPercentage: "30", EnvMPSMemLimit: "0=12288M",
			},
		},
		"memory is floored": {
			shares: []Share{{UUID: "GPU-a", MemoryMiB: 81920, Blocks: 33}},
			want: map[string]string{
				EnvBlocks: "33", EnvGPUUUID: "GPU-a",
				EnvMPSThreadPercentage: "33", EnvMPSMemLimit: "0=27033M",
			},
		},
		"two whole GPUs": {
			shares: []Share{{UUID: "GPU-a", MemoryMiB: 40960, Blocks: 100}, {UUID: "GPU-b", MemoryMiB: 81920, Blocks: 100}},
			want: map[string]string{
				EnvBlocks: "200", EnvGPUUUID: "GPU-a,GPU-b",
				EnvMPSThreadPercentage: "100", EnvMPSMemLimit: "0=40960M,1=81920M",
			},
		},
		"shares of two GPUs: the smallest sets the thread percentage": {
			shares: []Share{{UUID: "GPU-a", MemoryMiB: 40960, Blocks: 50}, {UUID: "GPU-b", MemoryMiB: 40960, Blocks: 20}},
			want: map[string]string{
				EnvBlocks: "70", EnvGPUUUID: "GPU-a,GPU-b",
				EnvMPSThreadPercentage: "20", EnvMPSMemLimit: "0=20480M,1=8192M",
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := map[string]string{}
			SetEnv(got, tc.shares)
			require.Equal(t, tc.want, got)
		})
	}
}

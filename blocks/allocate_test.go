package blocks

import (
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func TestAllocate(t *testing.T) {
	tests := map[string]struct {
		ids      []string
		wantEnv  map[string]string
		wantCDI  []string
		wantBase [][]string // BaseFunc calls made by Allocate itself
		wantMsg  []string   // for errors, all InvalidArgument
	}{
		"30 blocks of a 40 GB GPU": {
			ids: blocksOf(0, 10, 30),
			wantEnv: map[string]string{
				"BASE_UUIDS":                        "GPU-a0",
				"GPUBLOCKS_BLOCKS":                  "30",
				"GPUBLOCKS_GPU_UUID":                "GPU-a0",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=12288M",
			},
			wantCDI: []string{"gpublocks.io/gpu=GPU-a0"},
		},
		"1 block": {
			ids: blocksOf(3, 99, 1),
			wantEnv: map[string]string{
				"BASE_UUIDS":                        "GPU-a3",
				"GPUBLOCKS_BLOCKS":                  "1",
				"GPUBLOCKS_GPU_UUID":                "GPU-a3",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "1",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=409M", // 409.6 floored
			},
			wantCDI: []string{"gpublocks.io/gpu=GPU-a3"},
		},
		"33 blocks of an 80 GB GPU are floored": {
			ids: blocksOf(7, 0, 33),
			wantEnv: map[string]string{
				"BASE_UUIDS":                        "GPU-a7",
				"GPUBLOCKS_BLOCKS":                  "33",
				"GPUBLOCKS_GPU_UUID":                "GPU-a7",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "33",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=27033M", // 81920×0.33 = 27033.6
			},
			wantCDI: []string{"gpublocks.io/gpu=GPU-a7"},
		},
		"a whole GPU": {
			ids: blocksOf(1, 0, 100),
			wantEnv: map[string]string{
				"BASE_UUIDS":                        "GPU-a1",
				"GPUBLOCKS_BLOCKS":                  "100",
				"GPUBLOCKS_GPU_UUID":                "GPU-a1",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=40960M",
			},
			wantCDI: []string{"gpublocks.io/gpu=GPU-a1"},
		},
		"200 blocks are two whole GPUs, in index order": {
			ids: append(blocksOf(7, 0, 100), blocksOf(2, 0, 100)...),
			wantEnv: map[string]string{
				"BASE_UUIDS":                        "GPU-a2,GPU-a7",
				"GPUBLOCKS_BLOCKS":                  "200",
				"GPUBLOCKS_GPU_UUID":                "GPU-a2,GPU-a7",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=40960M,1=81920M",
			},
			wantCDI:  []string{"gpublocks.io/gpu=GPU-a2", "gpublocks.io/gpu=GPU-a7"},
			wantBase: [][]string{{"GPU-a2", "GPU-a7"}},
		},
		"split across two GPUs": {
			ids:     append(blocksOf(0, 0, 30), blocksOf(1, 0, 20)...),
			wantMsg: []string{"a request of 50 blocks must come from one GPU", "30 blocks from GPU 0 (GPU-a0) and 20 from GPU 1 (GPU-a1)", "GetPreferredAllocation"},
		},
		"split across three GPUs": {
			ids:     append(append(blocksOf(4, 0, 1), blocksOf(5, 0, 2)...), blocksOf(6, 0, 3)...),
			wantMsg: []string{"1 block from GPU 4 (GPU-a4), 2 from GPU 5 (GPU-a5) and 3 from GPU 6 (GPU-a6)"},
		},
		"150 blocks": {
			ids:     append(blocksOf(0, 0, 100), blocksOf(1, 0, 50)...),
			wantMsg: []string{"150 blocks is more than one GPU", "not a multiple of 100", "100 blocks from GPU 0 (GPU-a0) and 50 from GPU 1 (GPU-a1)", "200"},
		},
		"200 blocks not whole GPUs": {
			ids:     append(append(blocksOf(0, 0, 100), blocksOf(1, 0, 60)...), blocksOf(2, 0, 40)...),
			wantMsg: []string{"takes 2 whole GPUs", "100 blocks from GPU 0 (GPU-a0), 60 from GPU 1 (GPU-a1) and 40 from GPU 2 (GPU-a2)"},
		},
		"unknown GPU": {
			ids:     []string{"GPU-zz::3"},
			wantMsg: []string{`"GPU-zz::3"`, "no GPU this resource serves"},
		},
		"malformed ID": {
			ids:     []string{"GPU-a0::07"},
			wantMsg: []string{`"GPU-a0::07"`, "leading zeros"},
		},
		"duplicate ID": {
			ids:     []string{"GPU-a0::1", "GPU-a0::1"},
			wantMsg: []string{`"GPU-a0::1" is listed twice`},
		},
		"empty": {
			wantMsg: []string{"no blocks"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			gpus := testGPUs(8)
			gpus[7].MemoryMiB = 81920
			fb := &fakeBase{}
			r, err := NewResource("nvidia.com/gpu-blocks", gpus, Binpack, nil, fb.fn)
			require.NoError(t, err)
			require.Len(t, fb.calls, 8, "one precomputed base per GPU")
			fb.calls = nil

			resp, err := r.Allocate(tc.ids)
			if tc.wantMsg != nil {
				require.Error(t, err)
				require.Nil(t, resp)
				require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
				require.True(t, errors.Is(err, ErrInvalidRequest))
				for _, m := range tc.wantMsg {
					require.Contains(t, status.Convert(err).Message(), m)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantEnv, resp.Envs)
			var cdi []string
			for _, d := range resp.CdiDevices {
				cdi = append(cdi, d.Name)
			}
			require.Equal(t, tc.wantCDI, cdi)
			require.Equal(t, map[string]string{"base": "yes"}, resp.Annotations)
			require.Equal(t, tc.wantBase, fb.calls)
		})
	}
}

// TestAllocateDoesNotShareState: a caller that edits one response must not
// change the precomputed base or the next response.
func TestAllocateDoesNotShareState(t *testing.T) {
	r, _ := newTestResource(t, 2, Binpack, nil)
	first, err := r.Allocate(blocksOf(0, 0, 10))
	require.NoError(t, err)
	first.Envs["BASE_UUIDS"] = "tampered"
	first.Annotations["base"] = "tampered"
	first.CdiDevices[0] = nil
	first.CdiDevices = append(first.CdiDevices, nil)

	second, err := r.Allocate(blocksOf(0, 10, 20))
	require.NoError(t, err)
	require.Equal(t, "GPU-a0", second.Envs["BASE_UUIDS"])
	require.Equal(t, "20", second.Envs["GPUBLOCKS_BLOCKS"])
	require.Equal(t, "yes", second.Annotations["base"])
	require.Len(t, second.CdiDevices, 1)
	require.NotNil(t, second.CdiDevices[0])
	require.Len(t, r.gpus[0].base.Envs, 1, "base response untouched")
}

func TestAllocateNilBase(t *testing.T) {
	r, err := NewResource("nvidia.com/gpu-blocks", testGPUs(2), Binpack, nil,
		func([]string) *pluginapi.ContainerAllocateResponse { return nil })
	require.NoError(t, err)
	resp, err := r.Allocate(append(blocksOf(0, 0, 100), blocksOf(1, 0, 100)...))
	require.NoError(t, err)
	require.Equal(t, "200", resp.Envs["GPUBLOCKS_BLOCKS"])
	require.Empty(t, resp.CdiDevices)
}

// TestConcurrentUse exercises Prefer and Allocate from many goroutines, as
// several gRPC streams would, under -race.
func TestConcurrentUse(t *testing.T) {
	r, _ := newTestResource(t, 8, Binpack, map[string]bool{"GPU-a3": true})
	avail := freeList(map[int]int{0: 40, 1: 70, 2: 100, 3: 100, 4: 100})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				ids, err := r.Prefer(avail, nil, 30)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := r.Allocate(ids); err != nil {
					t.Error(err)
					return
				}
				if _, err := r.Prefer(avail, nil, 200); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

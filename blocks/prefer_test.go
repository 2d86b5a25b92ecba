package blocks

import (
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestPrefer(t *testing.T) {
	tests := map[string]struct {
		policy      Policy
		unhealthy   map[string]bool
		available   []string
		mustInclude []string
		size        int
		wantGPUs    []int
		wantCode    codes.Code
		wantErr     error
		wantMsg     []string
	}{
		"binpack takes the fullest GPU that fits exactly": {
			available: freeList(map[int]int{0: 100, 1: 40, 2: 30, 3: 20}),
			size:      30, wantGPUs: []int{2},
		},
		"binpack skips GPUs too small": {
			available: freeList(map[int]int{0: 100, 1: 40, 2: 30, 3: 20}),
			size:      35, wantGPUs: []int{1},
		},
		"spread takes the emptiest GPU": {
			policy:    Spread,
			available: freeList(map[int]int{0: 60, 1: 40, 2: 90, 3: 20}),
			size:      30, wantGPUs: []int{2},
		},
		"binpack tie goes to the lowest index": {
			available: freeList(map[int]int{5: 50, 1: 50, 3: 50}),
			size:      10, wantGPUs: []int{1},
		},
		"spread tie goes to the lowest index": {
			policy:    Spread,
			available: freeList(map[int]int{5: 50, 1: 50, 3: 20}),
			size:      10, wantGPUs: []int{1},
		},
		"100 blocks need a completely free GPU": {
			available: freeList(map[int]int{0: 99, 1: 99, 6: 100, 7: 100}),
			size:      100, wantGPUs: []int{6},
		},
		"a block listed twice counts once": {
			available: append(freeList(map[int]int{0: 10, 1: 30}), blocksOf(0, 90, 10)...),
			size:      15, wantGPUs: []int{1},
		},
		"1 block binpack": {
			available: freeList(map[int]int{0: 100, 4: 1}),
			size:      1, wantGPUs: []int{4},
		},
		"mustInclude forces its GPU over a better binpack fit": {
			available:   append(freeList(map[int]int{0: 10, 3: 50}), blocksOf(3, 0, 2)...),
			mustInclude: blocksOf(3, 0, 2),
			size:        10, wantGPUs: []int{3},
		},
		"mustInclude counts even when missing from available": {
			available:   freeList(map[int]int{0: 100, 2: 8}),
			mustInclude: blocksOf(2, 0, 2),
			size:        10, wantGPUs: []int{2},
		},
		"mustInclude that is the whole request": {
			available:   blocksOf(1, 0, 20),
			mustInclude: blocksOf(1, 0, 20),
			size:        20, wantGPUs: []int{1},
		},
		"mustInclude on two GPUs": {
			available:   freeList(map[int]int{0: 50, 1: 50}),
			mustInclude: append(blocksOf(0, 50, 5), blocksOf(1, 50, 5)...),
			size:        20, wantCode: codes.InvalidArgument, wantErr: ErrInvalidRequest,
			wantMsg: []string{"5 blocks from GPU 0 (GPU-a0) and 5 from GPU 1 (GPU-a1)"},
		},
		"mustInclude GPU has no room": {
			available:   freeList(map[int]int{0: 100, 1: 5}),
			mustInclude: blocksOf(1, 95, 5),
			size:        20, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
			wantMsg: []string{"including blocks the kubelet requires on GPU 1 (GPU-a1)", "ask for at most 5 blocks"},
		},
		"mustInclude larger than the request": {
			available:   blocksOf(1, 0, 30),
			mustInclude: blocksOf(1, 0, 30),
			size:        20, wantCode: codes.InvalidArgument, wantErr: ErrInvalidRequest,
		},
		"mustInclude unknown ID": {
			available:   freeList(map[int]int{0: 100}),
			mustInclude: []string{"GPU-zz::1"},
			size:        20, wantCode: codes.InvalidArgument, wantErr: ErrInvalidRequest,
			wantMsg: []string{`"GPU-zz::1"`},
		},
		"200 blocks take the two lowest free GPUs": {
			available: freeList(map[int]int{0: 99, 2: 100, 3: 100, 5: 100}),
			size:      200, wantGPUs: []int{2, 3},
		},
		"200 blocks with a required GPU": {
			available:   freeList(map[int]int{2: 100, 3: 100, 5: 100}),
			mustInclude: blocksOf(5, 0, 100),
			size:        200, wantGPUs: []int{2, 5},
		},
		"200 blocks with a required GPU that is not whole": {
			available:   freeList(map[int]int{2: 100, 3: 100, 5: 60}),
			mustInclude: blocksOf(5, 40, 10),
			size:        200, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
		},
		"300 blocks with only two whole GPUs": {
			available: freeList(map[int]int{0: 100, 1: 100, 2: 90, 3: 90}),
			size:      300, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
			wantMsg: []string{"300 blocks (3 whole GPUs; 2 completely free)", "ask for at most 200 blocks"},
		},
		"150 blocks is not a multiple of 100": {
			available: freeList(map[int]int{0: 100, 1: 100}),
			size:      150, wantCode: codes.InvalidArgument, wantErr: ErrInvalidRequest,
			wantMsg: []string{"150 blocks"},
		},
		"zero blocks": {
			available: freeList(map[int]int{0: 100}),
			size:      0, wantCode: codes.InvalidArgument, wantErr: ErrInvalidRequest,
		},
		"fits the node total but no single GPU": {
			available: freeList(map[int]int{0: 20, 1: 10, 2: 15}),
			size:      30, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
			wantMsg: []string{
				"cannot place 30 blocks on one GPU",
				"GPU 0 (GPU-a0) 20, GPU 1 (GPU-a1) 10, GPU 2 (GPU-a2) 15, GPU 3 (GPU-a3) 0",
				"45 free in total", "ask for at most 20 blocks", "node total",
			},
		},
		"unhealthy GPU blocks in available are ignored": {
			unhealthy: map[string]bool{"GPU-a0": true},
			available: freeList(map[int]int{0: 100, 1: 40}),
			size:      50, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
			wantMsg: []string{"GPU 0 (GPU-a0) 0 (unhealthy)"},
		},
		"unhealthy GPU skipped, healthy one chosen": {
			unhealthy: map[string]bool{"GPU-a0": true},
			available: freeList(map[int]int{0: 100, 1: 40}),
			size:      30, wantGPUs: []int{1},
		},
		"unknown and malformed IDs in available are ignored": {
			available: append(freeList(map[int]int{1: 30}), "GPU-zz::1", "junk", "GPU-a2::100"),
			size:      30, wantGPUs: []int{1},
		},
		"duplicates in available count once": {
			available: append(blocksOf(1, 0, 10), blocksOf(1, 0, 10)...),
			size:      15, wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
		},
		"nothing free": {
			size:     10,
			wantCode: codes.ResourceExhausted, wantErr: ErrNoFit,
			wantMsg: []string{"wait for blocks to be released"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, _ := newTestResource(t, 8, tc.policy, tc.unhealthy)
			got, err := r.Prefer(tc.available, tc.mustInclude, tc.size)
			if tc.wantErr != nil {
				require.Error(t, err)
				require.True(t, errors.Is(err, tc.wantErr), "error %v should wrap %v", err, tc.wantErr)
				require.Equal(t, tc.wantCode, status.Code(err), "gRPC code of %v", err)
				for _, m := range tc.wantMsg {
					require.Contains(t, status.Convert(err).Message(), m)
				}
				return
			}
			require.NoError(t, err)
			require.Len(t, got, tc.size)
			require.Equal(t, tc.wantGPUs, gpuIndices(t, got))
			seen := map[string]bool{}
			for _, id := range got {
				require.False(t, seen[id], "duplicate %s", id)
				seen[id] = true
				require.True(t, slices.Contains(tc.available, id) || slices.Contains(tc.mustInclude, id),
					"%s is neither available nor required", id)
			}
			for _, id := range tc.mustInclude {
				require.True(t, seen[id], "required %s missing", id)
			}
			// What Prefer picks, Allocate accepts.
			_, err = r.Allocate(got)
			require.NoError(t, err)
		})
	}
}

// TestPreferDeterministic: the same free set in any order gives the same
// answer, so a kubelet retry sees the same choice.
func TestPreferDeterministic(t *testing.T) {
	r, _ := newTestResource(t, 8, Binpack, nil)
	avail := freeList(map[int]int{0: 37, 3: 37, 5: 80, 7: 12})
	want, err := r.Prefer(avail, nil, 25)
	require.NoError(t, err)
	rev := slices.Clone(avail)
	slices.Reverse(rev)
	got, err := r.Prefer(rev, nil, 25)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, []int{0}, gpuIndices(t, got))
}

package resources

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSimplePreferIgnoresStaleIDs(t *testing.T) {
	r := newSimpleResource("nvidia.com/gpu", []unit{{id: "GPU-a", numa: 0}, {id: "GPU-b", numa: 1}, {id: "GPU-c", numa: 1}}, nil)
	tests := map[string]struct {
		available, must []string
		size            int
		want            []string
	}{
		"stale id ignored":            {available: []string{"GPU-gone", "GPU-a"}, size: 1, want: []string{"GPU-a"}},
		"smallest numa group fits":    {available: []string{"GPU-a", "GPU-b", "GPU-c"}, size: 1, want: []string{"GPU-a"}},
		"numa group of two":           {available: []string{"GPU-a", "GPU-b", "GPU-c"}, size: 2, want: []string{"GPU-b", "GPU-c"}},
		"must include pulls its numa": {available: []string{"GPU-a", "GPU-b", "GPU-c"}, must: []string{"GPU-c"}, size: 2, want: []string{"GPU-c", "GPU-b"}},
		"spills across numa":          {available: []string{"GPU-a", "GPU-b", "GPU-c"}, size: 3, want: []string{"GPU-a", "GPU-b", "GPU-c"}},
		// The kubelet's list naming a device twice must not make it count
		// twice, for a NUMA group or in the answer.
		"duplicated available":              {available: []string{"GPU-a", "GPU-a", "GPU-b"}, size: 2, want: []string{"GPU-a", "GPU-b"}},
		"duplicated available and required": {available: []string{"GPU-c", "GPU-c", "GPU-b"}, must: []string{"GPU-c"}, size: 2, want: []string{"GPU-c", "GPU-b"}},
		"only duplicates":                   {available: []string{"GPU-b", "GPU-b"}, size: 2, want: []string{"GPU-b"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := r.Prefer(tc.available, tc.must, tc.size)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

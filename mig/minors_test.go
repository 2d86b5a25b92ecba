package mig

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// The parser itself is tested (table and fuzz) in gpu/migminors; this checks
// the re-exported API on a driver-shaped table for two GPUs.
func TestParseMinors(t *testing.T) {
	data, err := os.ReadFile("testdata/mig-minors-2gpu")
	require.NoError(t, err)
	m, err := ParseMinors(data)
	require.NoError(t, err)

	tests := map[string]struct {
		gpu, gi, ci int
		wantGI      int
		wantCI      int
	}{
		"gpu0 gi0 ci0": {gpu: 0, gi: 0, ci: 0, wantGI: 3, wantCI: 4},
		"gpu0 gi1 ci0": {gpu: 0, gi: 1, ci: 0, wantGI: 12, wantCI: 13},
		"gpu1 gi0 ci7": {gpu: 1, gi: 0, ci: 7, wantGI: 138, wantCI: 146},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			gi, ok := m.GIAccess(tc.gpu, tc.gi)
			require.True(t, ok)
			require.Equal(t, tc.wantGI, gi)
			ci, ok := m.CIAccess(tc.gpu, tc.gi, tc.ci)
			require.True(t, ok)
			require.Equal(t, tc.wantCI, ci)
		})
	}

	_, err = ParseMinors([]byte("config 1\ngpu0/gi0/access\n"))
	require.ErrorContains(t, err, "line 2")
	require.Equal(t, "gpu2/gi3/ci1/access", CIAccessName(2, 3, 1))
	require.Equal(t, "gpu2/gi3/access", GIAccessName(2, 3))
}

package migminors

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseFile(t *testing.T) {
	data, err := os.ReadFile("testdata/mig-minors-2gpu")
	require.NoError(t, err)
	m, err := Parse(data)
	require.NoError(t, err)
	require.Equal(t, 2+2*15*9, m.Len())

	tests := map[string]struct {
		lookup func() (int, bool)
		want   int
		found  bool
	}{
		"config":          {lookup: func() (int, bool) { return m.Minor("config") }, want: 1, found: true},
		"monitor":         {lookup: func() (int, bool) { return m.Minor("monitor") }, want: 2, found: true},
		"gpu0 gi0":        {lookup: func() (int, bool) { return m.GIAccess(0, 0) }, want: 3, found: true},
		"gpu0 gi0 ci0":    {lookup: func() (int, bool) { return m.CIAccess(0, 0, 0) }, want: 4, found: true},
		"gpu0 gi1":        {lookup: func() (int, bool) { return m.GIAccess(0, 1) }, want: 12, found: true},
		"gpu0 gi1 ci0":    {lookup: func() (int, bool) { return m.CIAccess(0, 1, 0) }, want: 13, found: true},
		"gpu1 gi0":        {lookup: func() (int, bool) { return m.GIAccess(1, 0) }, want: 138, found: true},
		"gpu1 gi14 ci7":   {lookup: func() (int, bool) { return m.CIAccess(1, 14, 7) }, want: 272, found: true},
		"absent gpu":      {lookup: func() (int, bool) { return m.GIAccess(2, 0) }, found: false},
		"absent gi":       {lookup: func() (int, bool) { return m.GIAccess(0, 15) }, found: false},
		"absent ci":       {lookup: func() (int, bool) { return m.CIAccess(0, 0, 8) }, found: false},
		"zero value miss": {lookup: func() (int, bool) { return Table{}.GIAccess(0, 0) }, found: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := tc.lookup()
			require.Equal(t, tc.found, ok)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		wantErr string // substring; "" means success
		wantLen int
	}{
		"empty":                 {in: "", wantLen: 0},
		"blank lines and space": {in: "\n  config 1  \n\n\tgpu0/gi0/access\t3\n", wantLen: 2},
		"no trailing newline":   {in: "config 1\nmonitor 2", wantLen: 2},
		"unknown name kept":     {in: "config 1\nfabric-mgmt 9\n", wantLen: 2},
		"missing minor":         {in: "config 1\ngpu0/gi0/access\n", wantErr: "line 2"},
		"extra field":           {in: "config 1 2\n", wantErr: "line 1"},
		"minor not a number":    {in: "config one\n", wantErr: "line 1"},
		"negative minor":        {in: "\n\nconfig -1\n", wantErr: "line 3"},
		"minor too large":       {in: "config 1048576\n", wantErr: "line 1"},
		"bad gpu path":          {in: "gpu0/gi/access 3\n", wantErr: "line 1"},
		"bad leaf":              {in: "gpu0/gi0/ci0/open 3\n", wantErr: "line 1"},
		"leading zero id":       {in: "gpu00/gi0/access 3\n", wantErr: "malformed"},
		"too deep":              {in: "gpu0/gi0/ci0/x0/access 3\n", wantErr: "line 1"},
		"duplicate name":        {in: "config 1\nmonitor 2\nconfig 3\n", wantErr: "line 3"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantLen, m.Len())
		})
	}
}

// FuzzParseMinors checks that the parser never panics and that whatever it
// accepts can be looked up exactly as written.
func FuzzParseMinors(f *testing.F) {
	seed, err := os.ReadFile("testdata/mig-minors-2gpu")
	require.NoError(f, err)
	f.Add(seed)
	f.Add([]byte("config 1\nmonitor 2\n"))
	f.Add([]byte("gpu0/gi0/ci0/access 4"))
	f.Add([]byte("gpu0/gi0/access x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			require.Contains(t, err.Error(), "mig-minors")
			return
		}
		lines := 0
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if len(fields) == 0 {
				continue
			}
			lines++
			got, ok := m.Minor(fields[0])
			require.True(t, ok, "name %q", fields[0])
			require.GreaterOrEqual(t, got, 0)
			require.LessOrEqual(t, got, MaxMinor)
		}
		require.Equal(t, lines, m.Len())
	})
}

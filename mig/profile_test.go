package mig

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResourceSuffix(t *testing.T) {
	tests := map[string]struct{ in, want, err string }{
		"plain":            {in: "1g.10gb", want: "mig-1g.10gb"},
		"media extension":  {in: "1g.10gb+me", want: "mig-1g.10gb.me"},
		"compute slice":    {in: "1c.3g.40gb", want: "mig-1c.3g.40gb"},
		"large":            {in: "7g.80gb", want: "mig-7g.80gb"},
		"garbage":          {in: "big", err: `mig profile "big"`},
		"empty":            {in: "", err: "empty"},
		"both signs":       {in: "1g.10gb+me-me", err: "both"},
		"missing gb field": {in: "1g", err: `mig profile "1g"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ResourceSuffix(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

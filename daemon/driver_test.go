package daemon

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRuntimeDriverRoot(t *testing.T) {
	tests := map[string]struct{ driver, dev, want string }{
		"on the host":               {driver: "/", dev: "/", want: "/"},
		"host root mounted":         {driver: "/host", dev: "/host", want: "/"},
		"operator driver":           {driver: "/host/run/nvidia/driver", dev: "/host", want: "/run/nvidia/driver"},
		"trailing slashes":          {driver: "/host/run/nvidia/driver/", dev: "/host/", want: "/run/nvidia/driver"},
		"driver root outside":       {driver: "/driver", dev: "/host", want: "/driver"},
		"prefix but not a parent":   {driver: "/hostile/x", dev: "/host", want: "/hostile/x"},
		"dev root is / keeps as is": {driver: "/run/nvidia/driver", dev: "/", want: "/run/nvidia/driver"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.want, RuntimeDriverRoot(tc.driver, tc.dev))
		})
	}
}

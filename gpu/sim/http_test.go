package sim

import (
	"net/http/httptest"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
)

func TestFaultHandler(t *testing.T) {
	b, err := New("dgxa100-mig")
	require.NoError(t, err)
	h := b.FaultHandler()
	post := func(target string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", target, nil))
		return rec.Code, rec.Body.String()
	}

	// Nothing listens yet: the caller is told why nothing happened.
	code, body := post("/simulate/xid?gpu=3&xid=48")
	require.Equal(t, 409, code)
	require.Contains(t, body, "health.disabled")

	// Listen as the health monitor does, on every GPU.
	lib := b.NVML()
	set, ret := lib.EventSetCreate()
	require.Equal(t, nvml.SUCCESS, ret)
	n, _ := lib.DeviceGetCount()
	for i := range n {
		dev, _ := lib.DeviceGetHandleByIndex(i)
		require.Equal(t, nvml.SUCCESS, dev.RegisterEvents(nvml.EventTypeXidCriticalError|nvml.EventTypeDoubleBitEccError, set))
	}

	steps := []struct {
		name, target string
		code         int
		body         string
	}{
		{"xid", "/simulate/xid?gpu=3&xid=48", 200, "injected"},
		{"mig-scoped xid", "/simulate/xid?gpu=1&xid=48&gi=7&ci=0", 200, "injected"},
		{"ecc", "/simulate/ecc?gpu=2", 200, "injected"},
		{"lost", "/simulate/lost?gpu=4", 200, "injected"},
		{"restore", "/simulate/restore?gpu=4", 200, "injected"},
		{"missing xid", "/simulate/xid?gpu=3", 400, `"xid"`},
		{"gi without ci", "/simulate/xid?gpu=1&xid=48&gi=7", 400, `"ci"`},
		{"bad gpu", "/simulate/xid?gpu=x&xid=48", 400, `"gpu"`},
		{"no such gpu", "/simulate/xid?gpu=99&xid=48", 400, "99"},
	}
	for _, s := range steps {
		code, body := post(s.target)
		require.Equal(t, s.code, code, "%s: %s", s.name, body)
		require.Contains(t, body, s.body, s.name)
		if s.name == "lost" {
			require.True(t, b.Lost(4))
		}
	}
	require.False(t, b.Lost(4), "restored")

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/simulate/xid?gpu=3&xid=48", nil))
	require.Equal(t, 405, rec.Code, "injection only by POST")
}

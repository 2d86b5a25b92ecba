package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	// healthBudget is how quickly a fault must reach the kubelet.
	healthBudget = time.Second
	// quietPeriod is the test config's health.quietPeriod.
	quietPeriod = 2 * time.Second
	migSmall    = "nvidia.com/mig-1g.10gb"
)

// injectXID faults a simulated GPU inside the running gpublocks process,
// through the fault-injection endpoint that serve listens on, for simulated
// hardware, at --simulate-addr (loopback only).
func injectXID(t *testing.T, addr string, gpu int, xid uint64) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://%s/simulate/xid?gpu=%d&xid=%d", addr, gpu, xid), "", nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "injecting XID %d on GPU %d", xid, gpu)
}

// waitHealth waits until the device manager reports exactly want healthy
// (allocatable) devices per resource, every capacity unchanged from
// capacity, and returns how long that took.
func (n *kubeletNode) waitHealth(t *testing.T, capacity, want map[string]int64, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		c, a := n.capacities()
		ok := true
		for res, v := range capacity {
			ok = ok && c[res] == v && a[res] == want[res]
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			require.FailNow(t, fmt.Sprintf("device manager did not report allocatable %v within %s", want, timeout),
				"last capacity %v, allocatable %v", c, a)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHealth faults GPUs of every shape through NVML XID events and watches
// the kubelet's device manager: a fault makes exactly the faulted GPU's
// devices unhealthy within 1 s (its MIG devices, its 100 blocks, or the
// whole GPU), an ignored XID changes nothing, every device is healthy again
// after the quiet period, and /metrics counts the events.
func TestHealth(t *testing.T) {
	dir := shortTempDir(t)
	configFile := writeFile(t, dir, "config.yaml", fmt.Sprintf(
		"health: {quietPeriod: %s}\ngpus: [{match: {index: [2]}, shape: blocks}]\n", quietPeriod))
	metricsAddr, faultAddr := freeLocalAddr(t), freeLocalAddr(t)
	for faultAddr == metricsAddr {
		faultAddr = freeLocalAddr(t)
	}
	n := startKubeletNode(t, func(o *pluginOptions) {
		o.simulate = "dgxa100-mig"
		o.config = configFile
		o.metricsAddr = metricsAddr
		o.simulateAddr = faultAddr
	})
	// dgxa100-mig: GPU 0 holds 3g.40gb, 2g.20gb and two 1g.10gb, GPU 1 seven
	// 1g.10gb; GPU 2 is blocks by the config, GPUs 3-7 whole.
	capacity := map[string]int64{
		resourceName:             5,
		blocksResource:           blocksPerGPU,
		migSmall:                 9,
		"nvidia.com/mig-2g.20gb": 1,
		"nvidia.com/mig-3g.40gb": 1,
	}
	n.waitForCapacity(t, capacity, registerTimeout)
	healthy := func(changes map[string]int64) map[string]int64 {
		out := map[string]int64{}
		for r, v := range capacity {
			out[r] = v
		}
		for r, v := range changes {
			out[r] = v
		}
		return out
	}

	t.Run("the metrics address takes no faults", func(t *testing.T) {
		// Other hosts reach the metrics address; fault injection is on
		// --simulate-addr, loopback only.
		resp, err := http.Post(fmt.Sprintf("http://%s/simulate/xid?gpu=4&xid=48", metricsAddr), "", nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	})

	t.Run("an ignored XID changes nothing", func(t *testing.T) {
		injectXID(t, faultAddr, 3, 13)
		deadline := time.Now().Add(healthBudget)
		for time.Now().Before(deadline) {
			c, a := n.capacities()
			for r, v := range capacity {
				require.Equal(t, v, c[r], r)
				require.Equal(t, v, a[r], "%s: XID 13 is on the ignore list", r)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	faults := []struct {
		name      string
		gpu       int
		unhealthy map[string]int64 // allocatable after this and every earlier fault
	}{
		{"MIG GPU: exactly its seven 1g.10gb devices", 1, healthy(map[string]int64{migSmall: 2})},
		{"blocks GPU: exactly its 100 blocks", 2, healthy(map[string]int64{migSmall: 2, blocksResource: 0})},
		{"whole GPU: exactly that GPU", 4, healthy(map[string]int64{migSmall: 2, blocksResource: 0, resourceName: 4})},
	}
	for _, f := range faults {
		t.Run("XID 48 on the "+f.name, func(t *testing.T) {
			start := time.Now()
			injectXID(t, faultAddr, f.gpu, 48)
			took := n.waitHealth(t, capacity, f.unhealthy, healthBudget)
			t.Logf("XID 48 on GPU %d reached the kubelet after %s (injection %s)", f.gpu, took, time.Since(start)-took)
		})
	}

	t.Run("every device is healthy again after the quiet period", func(t *testing.T) {
		took := n.waitHealth(t, capacity, capacity, quietPeriod+5*time.Second)
		t.Logf("recovered %s after the last fault's report", took)
	})

	t.Run("metrics count the events", func(t *testing.T) {
		const xids = "gpublocks_xid_events_total"
		for _, gpu := range []string{"1", "2", "4"} {
			require.Equal(t, 1.0, metricSum(t, metricsAddr, xids, map[string]string{"gpu": gpu, "xid": "48", "ignored": "false"}), "GPU %s", gpu)
		}
		require.Equal(t, 3.0, metricSum(t, metricsAddr, xids, map[string]string{"xid": "48"}), "only the three faults")
		require.Equal(t, 1.0, metricSum(t, metricsAddr, xids, map[string]string{"gpu": "3", "xid": "13", "ignored": "true"}))
		require.Equal(t, 0.0, metricSum(t, metricsAddr, "gpublocks_devices", map[string]string{"health": "unhealthy", "resource": blocksResource}))
	})
}

var labelPair = regexp.MustCompile(`(\w+)="([^"]*)"`)

// metricSum scrapes /metrics on addr and sums every series of metric name
// whose labels include all of want (nil: every series). A metric with no
// matching series at all fails the test: a missing series is not a zero.
func metricSum(t *testing.T, addr, name string, want map[string]string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	require.NoError(t, err, "gpublocks serves no /metrics on --metrics-addr %s", addr)
	defer func() { _ = resp.Body.Close() }()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	sum, matched := 0.0, false
	for line := range strings.Lines(string(body)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), name)
		if !ok || (!strings.HasPrefix(rest, "{") && !strings.HasPrefix(rest, " ")) {
			continue // another metric, or one whose name starts with name
		}
		labels, value := "", strings.TrimSpace(rest)
		if strings.HasPrefix(rest, "{") {
			labels, value, ok = strings.Cut(rest[1:], "} ")
			require.True(t, ok, "metric line %q", line)
		}
		got := map[string]string{}
		for _, m := range labelPair.FindAllStringSubmatch(labels, -1) {
			got[m[1]] = m[2]
		}
		match := true
		for k, v := range want {
			match = match && got[k] == v
		}
		if match {
			v, err := strconv.ParseFloat(value, 64)
			require.NoError(t, err, "metric line %q", line)
			sum, matched = sum+v, true
		}
	}
	require.True(t, matched, "no %s series with labels %v in /metrics:\n%s", name, want, body)
	return sum
}

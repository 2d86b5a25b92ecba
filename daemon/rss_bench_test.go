package daemon

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// BenchmarkServeRSS starts the real binary (GPUBLOCKS_BIN, as `make bench`
// sets it) with `serve --simulate dgxa100` against a kubelet stand-in and
// reports the time from exec to the first ListAndWatch snapshot, the
// resident memory once ready, and the resident memory after 5,000 Allocate
// RPCs. tests/footprint measures the same side by side with NVIDIA's
// plugin (DESIGN §8); make bench runs this one only when that module
// cannot be built.
func BenchmarkServeRSS(b *testing.B) {
	bin := os.Getenv("GPUBLOCKS_BIN")
	if bin == "" {
		b.Skip("set GPUBLOCKS_BIN to a built gpublocks binary (make bench does)")
	}
	for range b.N {
		dir, err := os.MkdirTemp("", "gbr")
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
		pluginDir := filepath.Join(dir, "dp")
		if err := os.Mkdir(pluginDir, 0o755); err != nil {
			b.Fatal(err)
		}
		k, err := fakekubelet.Start(pluginDir)
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--simulate", "dgxa100", "--device-plugin-dir", pluginDir,
			"--cdi-dir", filepath.Join(dir, "cdi"), "--driver-root", dir, "--metrics-addr", "")
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		p, err := k.Plugin(ctx, "nvidia.com/gpu")
		if err == nil {
			err = p.WaitFor(ctx, func(d []*pluginapi.Device) bool { return len(d) == 8 })
		}
		ready := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // let start-up garbage settle as it would
		rssReady := rssMiB(b, cmd.Process.Pid)
		for i := range 5000 {
			ids, _, err := p.Allocate(ctx, 1)
			if err != nil {
				b.Fatalf("allocate %d: %v", i, err)
			}
			p.Release(ids)
		}
		rssAfter := rssMiB(b, cmd.Process.Pid)
		cancel()
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		k.Stop()
		b.ReportMetric(float64(ready.Microseconds())/1000, "ms-to-first-ListAndWatch")
		b.ReportMetric(rssReady, "MiB-RSS-ready")
		b.ReportMetric(rssAfter, "MiB-RSS-after-5000-RPCs")
	}
}

func rssMiB(b *testing.B, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS in /proc status")
	return 0
}

// Package footprint measures gpublocks' start-up time and memory side by
// side with NVIDIA's device plugin (DESIGN §8). It is a module of its own so
// that the product never depends on NVIDIA's plugin or on k8s.io/kubernetes.
//
// Both plugins run as separate processes on go-nvml's dgxa100 mock and
// register with the kubelet's own registration server
// (pkg/kubelet/cm/devicemanager/plugin/v1beta1) on a socket in a temporary
// directory. For each, in interleaved repetitions, it measures the time from
// exec to the first ListAndWatch response holding the 8 GPUs, the resident
// memory (VmRSS) once ready, and again after 5,000 Allocate RPCs made
// through the kubelet's own plugin client.
package footprint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	dpserver "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

// rpcs is how many Allocate calls each plugin answers before the second
// memory reading; FOOTPRINT_RPCS changes it (0: start-up only, for
// profiling).
var rpcs = 5000

const (
	resource = "nvidia.com/gpu"
	gpus     = 8 // dgxa100
	// settle is how long after the first ListAndWatch the resident memory
	// is read: what each plugin does right after registering (health
	// checks starting) belongs to "ready".
	settle = 500 * time.Millisecond
)

// The CEO's figures for NVIDIA's plugin v0.20.0 on these machines (issue
// 12), the reference when NVIDIA's plugin cannot be built here.
const (
	refNvidiaStartMs  = 10.5
	refNvidiaReadyMiB = 24.3
)

// contender is one plugin binary and how to start it in dir.
type contender struct {
	name string
	bin  string
	args func(dir string) []string
	env  func(dir string) []string
}

// result is one run's figures.
type result struct {
	start              time.Duration // exec to the first full ListAndWatch
	cpu                time.Duration // CPU time the plugin used until then
	rssReady, rssAfter float64       // MiB
}

func gpublocks(bin string) contender {
	return contender{
		name: "gpublocks",
		bin:  bin,
		args: func(dir string) []string {
			// Metrics on (as deployed), on a loopback port of its own.
			return []string{"serve", "--simulate", "dgxa100", "--device-plugin-dir", dir,
				"--cdi-dir", filepath.Join(dir, "cdi"), "--driver-root", dir,
				"--pod-resources-socket", filepath.Join(dir, "no-pod-resources.sock"),
				"--metrics-addr", "127.0.0.1:0"}
		},
		env: func(string) []string { return nil },
	}
}

func nvidia(bin string) contender {
	return contender{
		name: "nvidia",
		bin:  bin,
		args: func(dir string) []string {
			return []string{"--kubelet-socket", filepath.Join(dir, "kubelet.sock")}
		},
		// Read by the wrapper (nvidia/mock_nvml.go), which binds dir over
		// /var/lib/kubelet/device-plugins in its own mount namespace.
		env: func(dir string) []string { return []string{"FOOTPRINT_PLUGIN_DIR=" + dir} },
	}
}

// BenchmarkFootprint runs gpublocks (GPUBLOCKS_BIN) and NVIDIA's plugin
// (built from NVIDIA_DEVICE_PLUGIN_SRC, see nvidia.go) in
// FOOTPRINT_REPS (default 5) interleaved repetitions and reports the
// medians and ours/NVIDIA ratios. Without NVIDIA's plugin it reports
// gpublocks alone against the reference figures.
func BenchmarkFootprint(b *testing.B) {
	bin := os.Getenv("GPUBLOCKS_BIN")
	if bin == "" {
		b.Skip("set GPUBLOCKS_BIN to a built gpublocks binary (make bench does)")
	}
	reps := 5
	if v := os.Getenv("FOOTPRINT_RPCS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			b.Fatalf("FOOTPRINT_RPCS=%q: want a number ≥ 0", v)
		}
		rpcs = n
	}
	if v := os.Getenv("FOOTPRINT_REPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("FOOTPRINT_REPS=%q: want a positive number", v)
		}
		reps = n
	}
	contenders := []contender{gpublocks(bin)}
	nvBin, err := buildNvidia(b)
	if err != nil {
		b.Logf("SKIP NVIDIA side-by-side: %v", err)
		b.Logf("comparing with the reference figures instead: NVIDIA v0.20.0 %.1f ms to first ListAndWatch, %.1f MiB at ready", refNvidiaStartMs, refNvidiaReadyMiB)
	} else {
		contenders = append(contenders, nvidia(nvBin))
	}
	// Start every binary from the same page-cache state: how a binary got
	// into the cache (written by the linker, copied, read from disk) sets
	// the size of the page-cache folios the kernel maps on a fault, and so
	// the resident size, by megabytes. Each is evicted and then run once
	// untimed, so that both are read back from disk the same way, as from
	// a container image.
	for _, c := range contenders {
		if err := evict(c.bin); err != nil {
			b.Fatal(err)
		}
		if _, err := runOnce(b, c); err != nil {
			b.Fatalf("%s, warm-up: %v", c.name, err)
		}
	}
	for range b.N {
		runs := map[string][]result{}
		for rep := range reps {
			order := slices.Clone(contenders)
			if rep%2 == 1 {
				slices.Reverse(order) // neither always runs first
			}
			for _, c := range order {
				r, err := runOnce(b, c)
				if err != nil {
					b.Fatalf("%s, repetition %d: %v", c.name, rep+1, err)
				}
				b.Logf("rep %d %-9s first ListAndWatch %6.1f ms (CPU %5.1f ms)  RSS ready %5.1f MiB  after %d RPCs %5.1f MiB",
					rep+1, c.name, ms(r.start), ms(r.cpu), r.rssReady, rpcs, r.rssAfter)
				runs[c.name] = append(runs[c.name], r)
			}
		}
		ours := summarise(runs["gpublocks"])
		b.ReportMetric(ms(ours.start), "ms-start-gpublocks")
		b.ReportMetric(ms(ours.cpu), "ms-cpu-start-gpublocks")
		b.ReportMetric(ours.rssReady, "MiB-ready-gpublocks")
		b.ReportMetric(ours.rssAfter, "MiB-after-RPCs-gpublocks")
		if nv, ok := runs["nvidia"]; ok {
			theirs := summarise(nv)
			b.ReportMetric(ms(theirs.start), "ms-start-nvidia")
			b.ReportMetric(ms(theirs.cpu), "ms-cpu-start-nvidia")
			b.ReportMetric(float64(ours.cpu)/float64(theirs.cpu), "cpu-start-ratio")
			b.ReportMetric(theirs.rssReady, "MiB-ready-nvidia")
			b.ReportMetric(theirs.rssAfter, "MiB-after-RPCs-nvidia")
			b.ReportMetric(float64(ours.start)/float64(theirs.start), "start-ratio")
			b.ReportMetric(ours.rssReady/theirs.rssReady, "ready-ratio")
			b.ReportMetric(ours.rssAfter/theirs.rssAfter, "after-ratio")
			b.Logf("medians of %d: gpublocks %.1f ms (CPU %.1f), %.1f / %.1f MiB; NVIDIA %.1f ms (CPU %.1f), %.1f / %.1f MiB (ready / after %d RPCs)",
				reps, ms(ours.start), ms(ours.cpu), ours.rssReady, ours.rssAfter, ms(theirs.start), ms(theirs.cpu), theirs.rssReady, theirs.rssAfter, rpcs)
		} else {
			b.ReportMetric(ms(ours.start)/refNvidiaStartMs, "start-ratio-vs-ref")
			b.ReportMetric(ours.rssReady/refNvidiaReadyMiB, "ready-ratio-vs-ref")
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// summarise returns the per-figure medians.
func summarise(rs []result) result {
	med := func(f func(result) float64) float64 {
		v := make([]float64, 0, len(rs))
		for _, r := range rs {
			v = append(v, f(r))
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		start:    time.Duration(med(func(r result) float64 { return float64(r.start) })),
		cpu:      time.Duration(med(func(r result) float64 { return float64(r.cpu) })),
		rssReady: med(func(r result) float64 { return r.rssReady }),
		rssAfter: med(func(r result) float64 { return r.rssAfter }),
	}
}

// runOnce starts the kubelet's registration server, then the plugin, and
// measures it.
func runOnce(b *testing.B, c contender) (result, error) {
	dir, err := os.MkdirTemp("", "fp")
	if err != nil {
		return result{}, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, err := startKubelet(dir)
	if err != nil {
		return result{}, err
	}
	defer k.stop()

	logFile, err := os.Create(filepath.Join(dir, c.name+".log"))
	if err != nil {
		return result{}, err
	}
	defer func() { _ = logFile.Close() }()
	cmd := exec.Command(c.bin, c.args(dir)...)
	cmd.Env = append(os.Environ(), c.env(dir)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if os.Geteuid() == 0 {
		// Both start in a mount namespace of their own (NVIDIA's plugin
		// needs one, see nvidia/mock_nvml.go), so both pay for it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	}
	exited := make(chan struct{})
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, fmt.Errorf("starting %s: %w", c.bin, err)
	}
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	failed := func(err error) error {
		out, _ := os.ReadFile(logFile.Name())
		return fmt.Errorf("%w; plugin output:\n%s", err, tail(string(out), 3000))
	}

	client, at, err := k.waitReady(ctx, exited)
	if err != nil {
		return result{}, failed(err)
	}
	r := result{start: at.Sub(start)}
	if r.cpu, err = cpuTime(cmd.Process.Pid); err != nil {
		return result{}, failed(err)
	}
	time.Sleep(settle)
	if r.rssReady, err = vmRSS(cmd.Process.Pid); err != nil {
		return result{}, failed(err)
	}
	ids := k.deviceIDs()
	for i := range rpcs {
		_, err := client.API().Allocate(ctx, &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{ids[i%len(ids)]}}},
		})
		if err != nil {
			return result{}, failed(fmt.Errorf("allocate %d: %w", i, err))
		}
	}
	if r.rssAfter, err = vmRSS(cmd.Process.Pid); err != nil {
		return result{}, failed(err)
	}
	if keep := os.Getenv("FOOTPRINT_LOGDIR"); keep != "" {
		// For a closer look: the plugin's output, and when it was started.
		out, _ := os.ReadFile(logFile.Name())
		name := filepath.Join(keep, fmt.Sprintf("%s-%s.log", c.name, start.Format("150405.000000")))
		if err := os.WriteFile(name, append([]byte("exec at "+start.Format("15:04:05.000000")+"\n"), out...), 0o644); err != nil {
			return result{}, err
		}
	}
	return r, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// kubelet is the kubelet's own registration server with handlers that
// note when the plugin's first full device list arrives.
type kubelet struct {
	server dpserver.Server

	mu      sync.Mutex
	client  dpserver.DevicePlugin
	devices []*pluginapi.Device
	readyAt time.Time     // first ListAndWatch response with all GPUs
	ready   chan struct{} // closed at readyAt
}

func init() {
	// The registration server logs through klog; its lines would bury the
	// figures.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
}

func startKubelet(dir string) (*kubelet, error) {
	k := &kubelet{ready: make(chan struct{})}
	logger := klog.Background()
	srv, err := dpserver.NewServer(logger, filepath.Join(dir, "kubelet.sock"), k, k)
	if err != nil {
		return nil, err
	}
	if err := srv.Start(logger); err != nil {
		return nil, err
	}
	k.server = srv
	return k, nil
}

func (k *kubelet) stop() { _ = k.server.Stop(klog.Background()) }

// CleanupPluginDirectory is the kubelet's clean-up before it listens: the
// directory is new, there is nothing to remove.
func (k *kubelet) CleanupPluginDirectory(klog.Logger, string) error { return nil }

// PluginConnected keeps the client the kubelet built for the plugin.
func (k *kubelet) PluginConnected(_ context.Context, r string, p dpserver.DevicePlugin) error {
	if r != resource {
		return fmt.Errorf("unexpected resource %s", r)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.client = p
	return nil
}

// PluginDisconnected is a plugin going away; runOnce notices it exiting.
func (k *kubelet) PluginDisconnected(klog.Logger, string, string) {}

// PluginListAndWatchReceiver notes the first full device list.
func (k *kubelet) PluginListAndWatchReceiver(_ klog.Logger, r string, resp *pluginapi.ListAndWatchResponse) {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if r != resource || len(resp.Devices) != gpus || !k.readyAt.IsZero() {
		return
	}
	k.devices, k.readyAt = resp.Devices, now
	close(k.ready)
}

// waitReady waits for the first full device list and returns the client
// and when the list arrived.
func (k *kubelet) waitReady(ctx context.Context, exited <-chan struct{}) (dpserver.DevicePlugin, time.Time, error) {
	select {
	case <-k.ready:
	case <-exited:
		return nil, time.Time{}, errors.New("plugin exited before it listed its GPUs")
	case <-ctx.Done():
		return nil, time.Time{}, fmt.Errorf("no ListAndWatch response with %d GPUs: %w", gpus, ctx.Err())
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.client, k.readyAt, nil
}

func (k *kubelet) deviceIDs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	ids := make([]string, 0, len(k.devices))
	for _, d := range k.devices {
		ids = append(ids, d.ID)
	}
	return ids
}

// evict drops a file's pages from the page cache.
func evict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	if err := f.Sync(); err != nil { // dirty pages cannot be dropped
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("evicting %s from the page cache: %w", path, err)
	}
	return nil
}

// cpuTime is the CPU time a process's threads have run so far, from the
// scheduler's own accounting (nanoseconds, unlike the 10 ms ticks of
// /proc/PID/stat): on a loaded machine it tracks the work a start-up does
// where wall time mostly measures the wait for a CPU.
func cpuTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that just exited
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			return 0, fmt.Errorf("%s: empty", t)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		total += time.Duration(ns)
	}
	if total == 0 {
		return 0, fmt.Errorf("no CPU time in /proc/%d/task/*/schedstat", pid)
	}
	return total, nil
}

// vmRSS reads a process's resident set size in MiB.
func vmRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", rest, err)
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

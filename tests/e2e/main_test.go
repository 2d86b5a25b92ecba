package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

const (
	// resourceName is what the dgxa100 preset advertises with the default config.
	resourceName = "nvidia.com/gpu"
	// cdiKind is the CDI kind of gpublocks' spec (DESIGN §5).
	cdiKind = "gpublocks.io/gpu"
	// cdiSpecFile is the name of the spec file inside --cdi-dir.
	cdiSpecFile = "gpublocks.io-gpu.yaml"
	// dgxa100GPUs is the number of GPUs in the dgxa100 preset.
	dgxa100GPUs = 8
	// nvidiaMajor is the character-device major of /dev/nvidia<N> and /dev/nvidiactl.
	nvidiaMajor = 195

	// registerTimeout bounds how long a freshly started plugin may take to
	// register. It is generous because CI shares two cores between many jobs;
	// the restart budget below is the one the contract cares about.
	registerTimeout = 20 * time.Second
	// reregisterBudget is how quickly the plugin must be back after the
	// kubelet restarts.
	reregisterBudget = 2 * time.Second
)

// gpublocksBin is the product binary every test drives as a subprocess.
var gpublocksBin string

// TestMain builds the real gpublocks binary once, or takes the one named by
// GPUBLOCKS_BIN, so every test exercises exactly what the DaemonSet runs.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if bin := os.Getenv("GPUBLOCKS_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: GPUBLOCKS_BIN: %v\n", err)
			return 1
		}
		gpublocksBin = abs
		return m.Run()
	}

	tmp, err := os.MkdirTemp("", "gpublocks-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	gpublocksBin = filepath.Join(tmp, "gpublocks")
	if err := buildProduct(gpublocksBin); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building gpublocks: %v\n", err)
		return 1
	}
	return m.Run()
}

// buildProduct compiles ./cmd/gpublocks from the repository root. When this
// test binary runs under the race detector, or GPUBLOCKS_E2E_RACE=1 asks for
// it, the product is built with -race: races that only real kubelet traffic
// provokes are exactly what these tests are for. The environment variable
// gives that without paying for a race build of the kubelet code in the test
// binary itself.
func buildProduct(out string) error {
	race := raceEnabled || os.Getenv("GPUBLOCKS_E2E_RACE") == "1"
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "gpublocks")); err != nil {
		return fmt.Errorf("repository root not found from %s: %w", root, err)
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/gpublocks")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = os.Environ()
	if os.Getenv("CGO_CFLAGS") == "" {
		// go-nvml's headers trigger many deprecation warnings; they are noise.
		cmd.Env = append(cmd.Env, "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	}
	start := time.Now()
	output, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, output)
	}
	fmt.Fprintf(os.Stderr, "e2e: built gpublocks (race=%v) in %s\n", race, time.Since(start).Round(time.Millisecond))
	return nil
}

// testContext returns a context carrying a logger that writes through t, at a
// verbosity that shows the kubelet's registration steps but not every stream
// message.
func testContext(t *testing.T) (context.Context, klog.Logger) {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2)))
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	t.Cleanup(cancel)
	return ctx, logger
}

// shortTempDir returns a fresh directory with a short path: unix socket paths
// are limited to 108 bytes and t.TempDir embeds the (long) test name.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gbe2e")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// pluginOptions are the directories one gpublocks process works in, and
// what it simulates.
type pluginOptions struct {
	pluginDir string // --device-plugin-dir
	cdiDir    string // --cdi-dir
	rootDir   string // empty --driver-root and --dev-root: hermetic, no host files
	simulate  string // --simulate preset or file; "" means dgxa100
	config    string // --config file or directory; "" means built-in defaults
	// metricsAddr is --metrics-addr; "" disables the metrics server, so that
	// tests running side by side never fight over a port.
	metricsAddr string
	// simulateAddr is --simulate-addr, the loopback fault-injection
	// address; "" disables it, for the same reason.
	simulateAddr string
	// extraArgs are more serve flags (e.g. --pod-resources-socket).
	extraArgs []string
}

// newPluginOptions returns options with fresh temporary directories for
// everything; callers override pluginDir when a real kubelet path is needed.
func newPluginOptions(t *testing.T) pluginOptions {
	t.Helper()
	base := shortTempDir(t)
	o := pluginOptions{
		pluginDir: filepath.Join(base, "dp"),
		cdiDir:    filepath.Join(base, "cdi"),
		rootDir:   filepath.Join(base, "root"),
	}
	for _, d := range []string{o.pluginDir, o.cdiDir, o.rootDir} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	return o
}

// pluginProcess is one running `gpublocks serve`.
type pluginProcess struct {
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{}
	waitErr error
}

// startPlugin runs `gpublocks serve` on simulated hardware (the dgxa100
// preset unless o says otherwise). The process is killed at the end of the
// test if it is still running, and its output is logged when the test failed.
func startPlugin(t *testing.T, o pluginOptions) *pluginProcess {
	t.Helper()
	simulate := o.simulate
	if simulate == "" {
		simulate = "dgxa100"
	}
	args := []string{
		"serve",
		"--simulate", simulate,
		"--device-plugin-dir", o.pluginDir,
		"--cdi-dir", o.cdiDir,
		"--driver-root", o.rootDir,
		"--dev-root", o.rootDir,
		"--metrics-addr", o.metricsAddr,
		"--simulate-addr", o.simulateAddr,
	}
	if o.config != "" {
		args = append(args, "--config", o.config)
	}
	args = append(args, o.extraArgs...)
	p := &pluginProcess{
		cmd:  exec.Command(gpublocksBin, args...),
		out:  &syncBuffer{},
		done: make(chan struct{}),
	}
	// The flags say everything; GPUBLOCKS_* from the caller's environment
	// must not change what is tested.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GPUBLOCKS_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	require.NoError(t, p.cmd.Start(), "starting %s", gpublocksBin)
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Logf("started gpublocks (pid %d): %s", p.cmd.Process.Pid, strings.Join(args, " "))

	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		output := p.out.String()
		if strings.Contains(output, "WARNING: DATA RACE") {
			t.Errorf("gpublocks reported a data race")
		}
		if t.Failed() {
			t.Logf("gpublocks output:\n%s", output)
		}
	})
	return p
}

func (p *pluginProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// requireRunning fails the test if the process has already exited.
func (p *pluginProcess) requireRunning(t *testing.T) {
	t.Helper()
	if p.exited() {
		require.FailNow(t, "gpublocks exited early", "err: %v\noutput:\n%s", p.waitErr, p.out.String())
	}
}

// terminate sends SIGTERM and waits up to timeout for the process to exit. It
// returns the exit code and how long the process took.
func (p *pluginProcess) terminate(t *testing.T, timeout time.Duration) (int, time.Duration) {
	t.Helper()
	p.requireRunning(t)
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(timeout):
		require.FailNow(t, "gpublocks did not exit after SIGTERM", "waited %s", timeout)
	}
	elapsed := time.Since(start)
	var exitErr *exec.ExitError
	switch {
	case p.waitErr == nil:
		return 0, elapsed
	case errors.As(p.waitErr, &exitErr):
		return exitErr.ExitCode(), elapsed
	default:
		require.NoError(t, p.waitErr)
		return -1, elapsed
	}
}

// syncBuffer is a bytes.Buffer safe for the process's output copier and the
// test to use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// eventually polls cond every 10 ms until it returns true or timeout passes,
// and returns how long that took. Short polls keep restart timings honest.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msgAndArgs ...any) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			require.FailNow(t, fmt.Sprintf("condition not met within %s", timeout), msgAndArgs...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

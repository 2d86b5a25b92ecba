package deployments

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestServeWithManifestArgs runs the built binary (GPUBLOCKS_BIN, as
// `make e2e` sets it) with the static DaemonSet's own arguments, host paths
// swapped for temporary directories and GPUs simulated, and checks what the
// pod relies on: the flags parse, the CDI spec is written, and the liveness
// probe's /healthz answers on the metrics port.
func TestServeWithManifestArgs(t *testing.T) {
	bin := os.Getenv("GPUBLOCKS_BIN")
	if bin == "" {
		t.Skip("GPUBLOCKS_BIN is not set (make e2e sets it to the built binary)")
	}
	objs := decodeDir(t, "static")
	set := loadConfigMap(t, only[*corev1.ConfigMap](t, objs))
	c := only[*appsv1.DaemonSet](t, objs).Spec.Template.Spec.Containers[0]

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cdiDir, pluginDir := t.TempDir(), t.TempDir()
	// Flags naming host paths point at temporary directories; the node
	// name is dropped (there is no API server here to read its label from).
	swap := map[string]string{
		"config": set.Dir, "dev-root": "/", "driver-root": t.TempDir(),
		"cdi-dir": cdiDir, "device-plugin-dir": pluginDir, "metrics-addr": addr,
		"pod-resources-socket": filepath.Join(t.TempDir(), "kubelet.sock"),
	}
	// No fault-injection listener: its default port may be taken here.
	args := []string{"serve", "--simulate=dgxa100", "--simulate-addr="}
	for _, a := range c.Args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch v, ok := swap[name]; {
		case name == "node-name":
		case ok:
			args = append(args, fmt.Sprintf("--%s=%s", name, v))
		default:
			args = append(args, a)
		}
	}
	cmd := exec.Command(bin, args...)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("serve exited with %v after SIGTERM; want a clean exit", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("serve did not stop on SIGTERM within 10s")
		}
		if t.Failed() {
			t.Logf("gpublocks %s\n%s", strings.Join(args, " "), log.String())
		}
	}()

	// Both are observable only from outside, and in no fixed order: the
	// metrics listener may answer before discovery has written the spec.
	deadline := time.Now().Add(10 * time.Second)
	client := http.Client{Timeout: time.Second}
	spec := filepath.Join(cdiDir, "gpublocks.io-gpu.yaml")
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("serve exited early: %v", err)
		default:
		}
		resp, healthErr := client.Get("http://" + addr + "/healthz")
		if healthErr == nil {
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				healthErr = fmt.Errorf("status %s", resp.Status)
			}
		}
		_, specErr := os.Stat(spec)
		if healthErr == nil && specErr == nil {
			break
		}
		if time.Now().After(deadline) {
			if healthErr != nil {
				t.Errorf("the liveness probe's GET /healthz on %s (--metrics-addr) never succeeded: %v", addr, healthErr)
			}
			if specErr != nil {
				t.Errorf("no CDI spec in --cdi-dir: %v", specErr)
			}
			t.FailNow()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// DRAExecutable is the executable that serves DRA mode. It is a separate
// program so that the device plugin never links client-go and the
// Kubernetes API types: their package initialisation alone more than
// doubled its resident memory (measured: 19.5 → 45 MiB at ready).
const DRAExecutable = "gpublocks-dra"

// execDRA replaces this process with gpublocks-dra and the same arguments
// and environment, so that `gpublocks serve --kubelet-api dra` works as
// DESIGN §9 says. It is looked for beside this executable, then on PATH.
func execDRA() error {
	path, err := findDRA()
	if err != nil {
		return err
	}
	args := append([]string{path}, os.Args[1:]...)
	if err := syscall.Exec(path, args, os.Environ()); err != nil {
		return fmt.Errorf("running %s for DRA mode: %w", path, err)
	}
	return nil // not reached
}

func findDRA() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), DRAExecutable)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(DRAExecutable)
	if err != nil {
		return "", fmt.Errorf("--kubelet-api dra is served by %s, which is neither beside this executable nor on PATH (the image ships both; `make build` builds both into bin/): %w", DRAExecutable, errors.Unwrap(err))
	}
	return p, nil
}

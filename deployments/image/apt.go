package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrChecksum means a downloaded package is not the one apt's signed
// indexes describe.
var ErrChecksum = errors.New("package checksum mismatch")

// A Package is one Debian package as apt's indexes describe it.
type Package struct {
	Name, Version, Arch string
	SHA256              string
	File                string // local path once fetched
}

// FetchPackages downloads the candidate version of each package for arch
// into dir with apt-get (which checks it against the archive's signed
// indexes) and verifies each file against the SHA256 that apt-cache reports
// from those indexes. A file already in dir with the right hash is reused,
// so a warm cache needs no network.
func FetchPackages(ctx context.Context, dir, arch string, names []string) ([]Package, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []Package
	for _, name := range names {
		p, err := describe(ctx, name, arch)
		if err != nil {
			return nil, err
		}
		p.File = filepath.Join(dir, fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch))
		if verify(p.File, p.SHA256) != nil {
			if err := download(ctx, dir, p); err != nil {
				return nil, err
			}
			if err := verify(p.File, p.SHA256); err != nil {
				return nil, err
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// describe reads the candidate version's record from apt-cache.
func describe(ctx context.Context, name, arch string) (Package, error) {
	spec := name + ":" + arch
	cmd := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", spec)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return Package{}, fmt.Errorf("apt-cache show %s: %w: %s (run `apt-get update`; for a foreign architecture first `dpkg --add-architecture %s`)", spec, err, strings.TrimSpace(stderr.String()), arch)
	}
	p := Package{Name: name}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" && p.SHA256 != "" {
			break // the first record is the candidate
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch k {
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "SHA256":
			p.SHA256 = v
		}
	}
	if p.Version == "" || p.SHA256 == "" || p.Arch == "" {
		return Package{}, fmt.Errorf("apt-cache show %s: no version, architecture or SHA256 in its record", spec)
	}
	return p, nil
}

func download(ctx context.Context, dir string, p Package) error {
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", fmt.Sprintf("%s:%s=%s", p.Name, p.Arch, p.Version))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("apt-get download %s=%s: %w: %s", p.Name, p.Version, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func verify(file, want string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: %s has sha256 %s, apt's index says %s", ErrChecksum, file, got, want)
	}
	return nil
}

package gpu

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NewHost returns the Host of a real machine whose root filesystem (holding
// dev/nvidia* and proc/driver/nvidia*) is mounted at devRoot, "/" when this
// process sees the host directly.
func NewHost(devRoot string) Host {
	if devRoot == "" {
		devRoot = "/"
	}
	return hostFS{root: devRoot}
}

// ProcDevicesPath lists the kernel's device drivers and their majors,
// relative to the dev root.
const ProcDevicesPath = "/proc/devices"

// hostFS reads device nodes, /proc/devices and the mig-minors table below a
// root.
type hostFS struct{ root string }

// DeviceNode stats root+path. It must be a character device; its major and
// minor come from the node itself.
func (h hostFS) DeviceNode(path string) (DeviceNode, error) {
	hostPath := filepath.Join(h.root, path)
	var st unix.Stat_t
	if err := unix.Stat(hostPath, &st); err != nil {
		return DeviceNode{}, &fs.PathError{Op: "stat", Path: hostPath, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return DeviceNode{}, fmt.Errorf("%s is not a character device", hostPath)
	}
	rdev := uint64(st.Rdev) //nolint:unconvert // Rdev is uint32 on some platforms.
	return DeviceNode{
		Path:     path,
		HostPath: hostPath,
		Major:    unix.Major(rdev),
		Minor:    unix.Minor(rdev),
	}, nil
}

// MigCapMinors reads <root>/proc/driver/nvidia-caps/mig-minors.
func (h hostFS) MigCapMinors() ([]byte, error) {
	return os.ReadFile(filepath.Join(h.root, MigMinorsPath))
}

// CharMajor looks name up in the "Character devices:" section of
// <root>/proc/devices.
func (h hostFS) CharMajor(name string) (uint32, error) {
	p := filepath.Join(h.root, ProcDevicesPath)
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	major, ok, err := ParseCharMajor(data, name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	if !ok {
		return 0, fmt.Errorf("%s: no character device %q (is its kernel module loaded?): %w", p, name, fs.ErrNotExist)
	}
	return major, nil
}

// ParseCharMajor finds name in the "Character devices:" section of a
// /proc/devices listing such as
//
//	Character devices:
//	195 nvidia-frontend
//	235 nvidia-uvm
//	511 nvidia-caps
//
//	Block devices:
//	  7 loop
//
// ok is false when the name is not listed there.
func ParseCharMajor(data []byte, name string) (major uint32, ok bool, err error) {
	inChar := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			inChar = false
			continue
		case strings.HasSuffix(line, ":"):
			inChar = line == "Character devices:"
			continue
		case !inChar:
			continue
		}
		num, dev, found := strings.Cut(line, " ")
		if !found || strings.TrimSpace(dev) != name {
			continue
		}
		n, err := strconv.ParseUint(num, 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("bad major in %q: %w", line, err)
		}
		return uint32(n), true, nil
	}
	return 0, false, sc.Err()
}

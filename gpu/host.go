package gpu

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

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

// hostFS reads device nodes and the mig-minors table below a root.
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

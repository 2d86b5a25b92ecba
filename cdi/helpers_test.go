package cdi

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
)

// Test UUIDs: two whole GPUs, one MIG-enabled GPU with three MIG devices of
// which the last has no capability nodes.
const (
	uuidGPU0 = "GPU-00000000-0000-0000-0000-000000000000"
	uuidGPU1 = "GPU-11111111-1111-1111-1111-111111111111"
	uuidGPU2 = "GPU-22222222-2222-2222-2222-222222222222"
	uuidMIG0 = "MIG-20000000-0000-0000-0000-000000000000"
	uuidMIG1 = "MIG-21111111-1111-1111-1111-111111111111"
	uuidMIG2 = "MIG-22222222-2222-2222-2222-222222222222"
)

var errNoCap = errors.New("gi 9 has no entry in mig-minors")

func node(path string, major, minor uint32) gpu.DeviceNode {
	return gpu.DeviceNode{Path: path, HostPath: path, Major: major, Minor: minor}
}

func testInventory() *gpu.Inventory {
	return &gpu.Inventory{
		DriverVersion:     "550.54.15",
		CUDADriverVersion: 12040,
		// Deliberately out of index order: the spec must not depend on it.
		GPUs: []gpu.GPU{
			{
				Index: 2, UUID: uuidGPU2, Minor: 2, Model: "NVIDIA A100-SXM4-80GB",
				MemoryMiB: 81920, MigCapable: true, MigEnabled: true,
				Node: node("/dev/nvidia2", 195, 2),
				MigDevices: []gpu.MigDevice{
					{
						Index: 1, UUID: uuidMIG1, Profile: "1g.10gb", GI: 13, CI: 0,
						ParentIndex: 2, ParentUUID: uuidGPU2,
						CapNodes: []gpu.DeviceNode{
							node("/dev/nvidia-caps/nvidia-cap741", 508, 741),
							node("/dev/nvidia-caps/nvidia-cap742", 508, 742),
						},
					},
					{
						Index: 0, UUID: uuidMIG0, Profile: "3g.40gb", GI: 1, CI: 0,
						ParentIndex: 2, ParentUUID: uuidGPU2,
						CapNodes: []gpu.DeviceNode{
							node("/dev/nvidia-caps/nvidia-cap282", 508, 282),
							node("/dev/nvidia-caps/nvidia-cap283", 508, 283),
						},
					},
					{
						Index: 2, UUID: uuidMIG2, Profile: "1g.10gb", GI: 9, CI: 0,
						ParentIndex: 2, ParentUUID: uuidGPU2, CapErr: errNoCap,
					},
				},
			},
			{Index: 0, UUID: uuidGPU0, Minor: 0, Model: "NVIDIA A100-SXM4-80GB", Node: node("/dev/nvidia0", 195, 0)},
			{Index: 1, UUID: uuidGPU1, Minor: 1, Model: "NVIDIA A100-SXM4-80GB", Node: node("/dev/nvidia1", 195, 1)},
		},
		ControlNodes: []gpu.DeviceNode{
			node("/dev/nvidiactl", 195, 255),
			node("/dev/nvidia-uvm", 510, 0),
			node("/dev/nvidia-uvm-tools", 510, 1),
		},
	}
}

// tree describes files to create under a root: a value starting with "->"
// is a symlink target, anything else is file content.
type tree map[string]string

func makeTree(t *testing.T, root string, files tree) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		if target, ok := strings.CutPrefix(content, "->"); ok {
			require.NoError(t, os.Symlink(target, p))
			continue
		}
		require.NoError(t, os.WriteFile(p, []byte(content), 0o755))
	}
}

// debianDriver is a fake driver install as Debian/Ubuntu packages lay it out,
// on a merged-/usr host whose /lib is an absolute symlink.
var debianDriver = tree{
	"usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15":                  so("fake libcuda"),
	"usr/lib/x86_64-linux-gnu/libcuda.so.1":                          "->libcuda.so.550.54.15",
	"usr/lib/x86_64-linux-gnu/libcuda.so":                            "->libcuda.so.1",
	"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15":             so("fake nvml"),
	"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1":                     "->libnvidia-ml.so.550.54.15",
	"usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.550.54.15": so("fake ptxjit"),
	"usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1":         "->libnvidia-ptxjitcompiler.so.550.54.15",
	"usr/lib/x86_64-linux-gnu/libc.so.6":                             "not ours",
	"lib":                                                            "->/usr/lib",
	"usr/bin/nvidia-smi":                                             "fake nvidia-smi",
}

// so returns the content of a minimal x86-64 ELF shared object: a 64-byte
// ELF header of type ET_DYN with no sections or segments, followed by
// marker, which a test can look for in a container. The driver search only
// mounts ELF shared objects as libraries.
func so(marker string) string {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1 // ELFCLASS64, little-endian, EV_CURRENT
	le := binary.LittleEndian
	le.PutUint16(h[16:], 3)  // e_type ET_DYN
	le.PutUint16(h[18:], 62) // e_machine EM_X86_64
	le.PutUint32(h[20:], 1)  // e_version
	le.PutUint16(h[52:], 64) // e_ehsize
	le.PutUint16(h[54:], 56) // e_phentsize
	le.PutUint16(h[58:], 64) // e_shentsize
	return string(h) + marker
}

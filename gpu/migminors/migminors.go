// Package migminors parses the driver's MIG capability table,
// /proc/driver/nvidia-caps/mig-minors, which says which minor of the
// nvidia-caps character device grants access to which GPU and compute
// instance. It is a leaf package so that both discovery (package gpu) and the
// MIG resource logic (package mig, which re-exports it) can use it.
package migminors

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// MaxMinor is the largest minor number a Linux character device can have
// (minors are 20 bits wide).
const MaxMinor = 1<<20 - 1

// Table is the parsed content of the driver's
// /proc/driver/nvidia-caps/mig-minors table: which minor number of the
// nvidia-caps character device grants which MIG capability. Lines look like
//
//	config 1
//	monitor 2
//	gpu0/gi0/access 3
//	gpu0/gi0/ci0/access 4
//
// where gpu<N> is the GPU's device minor (as in /dev/nvidia<N>), gi<G> the GPU
// instance ID and ci<C> the compute instance ID. A Table is immutable
// and safe for concurrent use; the zero value is an empty table.
type Table struct {
	byName map[string]int
}

// Parse parses a mig-minors table. Blank lines are ignored. Every other
// line must be "<name> <minor>"; names starting with "gpu" must have the shape
// gpu<N>/gi<G>/access or gpu<N>/gi<G>/ci<C>/access. Other well-formed names are
// kept (a newer driver may add capabilities) and can be read with Minor. A
// malformed line or a name listed twice is an error naming the line number.
func Parse(data []byte) (Table, error) {
	m := Table{byName: map[string]int{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return Table{}, fmt.Errorf("mig-minors line %d: want \"<name> <minor>\", got %q", n, line)
		}
		name, num := fields[0], fields[1]
		minor, err := strconv.Atoi(num)
		if err != nil || minor < 0 || minor > MaxMinor {
			return Table{}, fmt.Errorf("mig-minors line %d: minor %q is not a number between 0 and %d", n, num, MaxMinor)
		}
		if strings.HasPrefix(name, "gpu") && !validGPUCapName(name) {
			return Table{}, fmt.Errorf("mig-minors line %d: malformed capability %q (want gpu<N>/gi<G>/access or gpu<N>/gi<G>/ci<C>/access)", n, name)
		}
		if _, dup := m.byName[name]; dup {
			return Table{}, fmt.Errorf("mig-minors line %d: capability %q listed twice", n, name)
		}
		m.byName[name] = minor
	}
	if err := sc.Err(); err != nil {
		return Table{}, fmt.Errorf("reading mig-minors: %w", err)
	}
	return m, nil
}

// validGPUCapName reports whether name is gpu<N>/gi<G>/access or
// gpu<N>/gi<G>/ci<C>/access with decimal, canonical (no leading zero) IDs,
// so that the name GIAccess and CIAccess build is the only spelling.
func validGPUCapName(name string) bool {
	parts := strings.Split(name, "/")
	if len(parts) != 3 && len(parts) != 4 {
		return false
	}
	if parts[len(parts)-1] != "access" {
		return false
	}
	prefixes := []string{"gpu", "gi", "ci"}
	for i, p := range parts[:len(parts)-1] {
		id, ok := strings.CutPrefix(p, prefixes[i])
		if !ok || !canonicalUint(id) {
			return false
		}
	}
	return true
}

// canonicalUint reports whether s is a decimal number without sign or
// leading zeros, small enough for an int.
func canonicalUint(s string) bool {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Minor returns the minor listed for a capability name, e.g. "config" or
// "gpu0/gi1/access".
func (m Table) Minor(name string) (int, bool) {
	minor, ok := m.byName[name]
	return minor, ok
}

// Len returns the number of capabilities in the table.
func (m Table) Len() int { return len(m.byName) }

// GIAccess returns the minor of the access capability of GPU instance gi on
// the GPU whose device minor is gpuMinor.
func (m Table) GIAccess(gpuMinor, gi int) (int, bool) {
	return m.Minor(GIAccessName(gpuMinor, gi))
}

// CIAccess returns the minor of the access capability of compute instance ci
// in GPU instance gi on the GPU whose device minor is gpuMinor.
func (m Table) CIAccess(gpuMinor, gi, ci int) (int, bool) {
	return m.Minor(CIAccessName(gpuMinor, gi, ci))
}

// GIAccessName is the mig-minors name of a GPU instance's access capability.
func GIAccessName(gpuMinor, gi int) string {
	return fmt.Sprintf("gpu%d/gi%d/access", gpuMinor, gi)
}

// CIAccessName is the mig-minors name of a compute instance's access
// capability.
func CIAccessName(gpuMinor, gi, ci int) string {
	return fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpuMinor, gi, ci)
}

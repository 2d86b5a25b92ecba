package mig

import "github.com/gpublocks/gpublocks/gpu/migminors"

// Minors is the parsed /proc/driver/nvidia-caps/mig-minors table: which
// nvidia-caps minor grants access to which GPU and compute instance. The
// parser lives in the leaf package gpu/migminors because discovery (package
// gpu, which this package imports) resolves capability nodes with it too.
type Minors = migminors.Table

// ParseMinors parses a mig-minors table; a malformed line is an error naming
// its line number. See migminors.Parse.
func ParseMinors(data []byte) (Minors, error) { return migminors.Parse(data) }

// GIAccessName is the mig-minors name of a GPU instance's access capability,
// e.g. "gpu0/gi1/access"; gpuMinor is the GPU's device minor.
func GIAccessName(gpuMinor, gi int) string { return migminors.GIAccessName(gpuMinor, gi) }

// CIAccessName is the mig-minors name of a compute instance's access
// capability, e.g. "gpu0/gi1/ci0/access".
func CIAccessName(gpuMinor, gi, ci int) string { return migminors.CIAccessName(gpuMinor, gi, ci) }

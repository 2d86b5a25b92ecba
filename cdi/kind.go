package cdi

import (
	"fmt"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
)

// Kind is the CDI vendor and class under which gpublocks publishes its
// devices. It is deliberately not NVIDIA's "nvidia.com/gpu": both specs can
// then live in one CDI directory without defining the same device names
// (two specs defining one name make the device vanish for the runtime).
type Kind struct {
	Vendor string // e.g. "gpublocks.io"
	Class  string // e.g. "gpu"
}

// DefaultKind is "gpublocks.io/gpu".
var DefaultKind = Kind{Vendor: "gpublocks.io", Class: "gpu"}

// String returns the kind as it appears in a spec, e.g. "gpublocks.io/gpu".
func (k Kind) String() string { return k.Vendor + "/" + k.Class }

// Validate checks the vendor and class against the CDI naming rules.
func (k Kind) Validate() error {
	if err := parser.ValidateVendorName(k.Vendor); err != nil {
		return fmt.Errorf("%w %q: %w", ErrInvalidKind, k.String(), err)
	}
	if err := parser.ValidateClassName(k.Class); err != nil {
		return fmt.Errorf("%w %q: %w", ErrInvalidKind, k.String(), err)
	}
	return nil
}

// QualifiedName returns the fully qualified CDI name of a device, e.g.
// "gpublocks.io/gpu=GPU-8c1b…", as a runtime expects it in CdiDevices.
func (k Kind) QualifiedName(device string) string {
	return parser.QualifiedName(k.Vendor, k.Class, device)
}

// SpecFileName is the base name of the spec file, e.g. "gpublocks.io-gpu.yaml".
func (k Kind) SpecFileName() string {
	return cdiapi.GenerateSpecName(k.Vendor, k.Class) + ".yaml"
}

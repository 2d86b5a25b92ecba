package cdi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// ClaimClass is the CDI class of per-claim devices: a claim's devices are
// named <vendor>/claim=<claim-uid>-<request>, next to the base spec's
// <vendor>/gpu=<uuid>.
const ClaimClass = "claim"

// A ClaimDevice is one per-claim CDI device: the environment that the
// containers using one request of a DRA ResourceClaim receive.
type ClaimDevice struct {
	// Request is the claim's request name, as containers reference it.
	Request string
	// Env is the environment, variable to value.
	Env map[string]string
}

// ClaimSpecs keeps the per-claim CDI specs of DRA mode (DESIGN §9): one
// transient spec file per prepared ResourceClaim,
// <dir>/<vendor>-claim_<claim-uid>.yaml, with one device per request that
// carries only environment. Everything node-wide (device nodes, driver
// files) stays in the base spec; a claim's spec only adds what differs
// between two claims on one GPU, so the base spec is never rewritten for a
// claim. The claim UID in every device name means a name is never reused
// for other content: a runtime's cached lookup can never be stale.
//
// Files follow the base spec's rules: validated with the CDI library,
// encoded as the library encodes (Marshal), the lowest cdiVersion the
// content needs, written atomically with mode 0644. ClaimSpecs holds no
// state of its own; callers serialise writes of one claim.
type ClaimSpecs struct {
	dir  string
	kind Kind
}

// NewClaimSpecs returns the per-claim specs of the base kind's vendor in
// dir (the --cdi-dir). The directory need not exist yet.
func NewClaimSpecs(dir string, base Kind) (*ClaimSpecs, error) {
	if base == (Kind{}) {
		base = DefaultKind
	}
	kind := Kind{Vendor: base.Vendor, Class: ClaimClass}
	if err := kind.Validate(); err != nil {
		return nil, err
	}
	return &ClaimSpecs{dir: filepath.Clean(dir), kind: kind}, nil
}

// Kind is the kind of the per-claim devices, e.g. "gpublocks.io/claim".
func (c *ClaimSpecs) Kind() Kind { return c.kind }

// DeviceName names a claim's device for one request:
// "<claim-uid>-<request>". A request name is a DNS label (lowercase
// letters, digits, '-') and is used as it is; any other byte, including
// the '/' of a "request/subrequest" reference, is written as "_" and two
// hex digits ("_2f"). Since no DNS label holds '_', the mapping is
// injective: two requests never share a device name.
func (c *ClaimSpecs) DeviceName(claimUID, request string) string {
	var b strings.Builder
	b.Grow(len(claimUID) + 1 + len(request))
	b.WriteString(claimUID)
	b.WriteByte('-')
	for i := 0; i < len(request); i++ {
		switch ch := request[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '-', ch == '.':
			b.WriteByte(ch)
		default:
			fmt.Fprintf(&b, "_%02x", ch)
		}
	}
	return b.String()
}

// QualifiedName is the fully qualified CDI name of a claim's device for
// one request, e.g. "gpublocks.io/claim=<claim-uid>-<request>", as
// NodePrepareResources returns it.
func (c *ClaimSpecs) QualifiedName(claimUID, request string) string {
	return c.kind.QualifiedName(c.DeviceName(claimUID, request))
}

// Path is the spec file of a claim.
func (c *ClaimSpecs) Path(claimUID string) string {
	return filepath.Join(c.dir, c.fileName(claimUID))
}

func (c *ClaimSpecs) fileName(claimUID string) string {
	return cdiapi.GenerateTransientSpecName(c.kind.Vendor, c.kind.Class, claimUID) + ".yaml"
}

// Build returns the spec of a claim: one device per ClaimDevice, its
// environment sorted by name so that equal input gives equal bytes.
// Errors wrap ErrInvalidSpec.
func (c *ClaimSpecs) Build(claimUID string, devices []ClaimDevice) (*specs.Spec, error) {
	if err := validateClaimUID(claimUID); err != nil {
		return nil, err
	}
	spec := &specs.Spec{Kind: c.kind.String()}
	for _, d := range devices {
		if len(d.Env) == 0 {
			// A device without edits makes a runtime reject the whole spec.
			return nil, fmt.Errorf("%w: claim %s, request %q: no environment", ErrInvalidSpec, claimUID, d.Request)
		}
		env := make([]string, 0, len(d.Env))
		for k, v := range d.Env {
			env = append(env, k+"="+v)
		}
		slices.Sort(env)
		spec.Devices = append(spec.Devices, specs.Device{
			Name:           c.DeviceName(claimUID, d.Request),
			ContainerEdits: specs.ContainerEdits{Env: env},
		})
	}
	version, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: claim %s: %w", ErrInvalidSpec, claimUID, err)
	}
	spec.Version = version
	if err := ValidateSpec(spec); err != nil {
		return nil, fmt.Errorf("claim %s: %w", claimUID, err)
	}
	return spec, nil
}

// Write builds a claim's spec and writes it atomically, mode 0644,
// creating the directory if needed. A file that already holds exactly
// these bytes with that mode is left alone; changed reports whether the
// file was written. Errors wrap ErrInvalidSpec or ErrWriteSpec.
func (c *ClaimSpecs) Write(ctx context.Context, claimUID string, devices []ClaimDevice) (changed bool, err error) {
	spec, err := c.Build(claimUID, devices)
	if err != nil {
		return false, err
	}
	data, err := Marshal(spec)
	if err != nil {
		return false, err
	}
	path := c.Path(claimUID)
	if same, err := fileHolds(path, data); err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	} else if same {
		return false, nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	if err := atomicfile.Write(path, data, SpecFileMode); err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	klog.FromContext(ctx).V(4).Info("Wrote claim CDI spec", "path", path, "devices", len(spec.Devices))
	return true, nil
}

// Remove deletes a claim's spec file; removed reports whether there was
// one. A missing file is no error. Errors wrap ErrWriteSpec.
func (c *ClaimSpecs) Remove(claimUID string) (removed bool, err error) {
	if err := validateClaimUID(claimUID); err != nil {
		return false, err
	}
	switch err := os.Remove(c.Path(claimUID)); {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
}

// List returns the UIDs of the claims that have a spec file, sorted. A
// missing directory holds none.
func (c *ClaimSpecs) List() ([]string, error) {
	entries, err := os.ReadDir(c.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list claim cdi specs: %w", err)
	}
	prefix := c.fileName("")
	prefix = strings.TrimSuffix(prefix, ".yaml")
	var uids []string
	for _, e := range entries {
		uid, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		uid, ok = strings.CutSuffix(uid, ".yaml")
		if ok && validateClaimUID(uid) == nil {
			uids = append(uids, uid)
		}
	}
	return uids, nil
}

// RemoveTemps removes the temporary files that an interrupted write of a
// claim spec left behind (atomicfile.RemoveTemps); call it at start,
// before the first Write.
func (c *ClaimSpecs) RemoveTemps(ctx context.Context) error {
	removed, err := atomicfile.RemoveTemps(c.dir, c.fileName("*"))
	for _, p := range removed {
		klog.FromContext(ctx).Info("Removed a temporary file left by an interrupted write", "file", p)
	}
	return err
}

// validateClaimUID accepts what may stand in a device and a file name:
// letters, digits and '-', starting and ending with a letter or digit
// (Kubernetes UIDs are UUIDs).
func validateClaimUID(uid string) error {
	ok := uid != ""
	for i := 0; ok && i < len(uid); i++ {
		ch := uid[i]
		alnum := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9'
		ok = alnum || ch == '-' && i > 0 && i < len(uid)-1
	}
	if !ok {
		return fmt.Errorf("%w: claim uid %q: want letters, digits and inner '-'", ErrInvalidSpec, uid)
	}
	return nil
}

// fileHolds reports whether path is a regular file of mode SpecFileMode
// holding exactly data.
func fileHolds(path string, data []byte) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != SpecFileMode || fi.Size() != int64(len(data)) {
		return false, nil
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return bytes.Equal(old, data), nil
}

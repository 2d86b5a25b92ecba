package cdi

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpublocks/gpublocks/config"
)

// A Strategy is one way of telling the runtime which devices a container
// gets (the config's deviceListStrategy).
type Strategy string

const (
	// StrategyCDICRI names CDI devices in the CRI's CdiDevices field
	// (containerd ≥ 1.7, CRI-O ≥ 1.23 with CDI enabled).
	StrategyCDICRI Strategy = config.ListCDICRI
	// StrategyCDIAnnotations names CDI devices in a cdi.k8s.io/ annotation,
	// for runtimes that read CDI requests only from annotations.
	StrategyCDIAnnotations Strategy = config.ListCDIAnnotations
	// StrategyEnvvar sets NVIDIA_VISIBLE_DEVICES for NVIDIA's legacy
	// runtime hook, which then injects the devices itself.
	StrategyEnvvar Strategy = config.ListEnvvar
)

// Strategies lists every valid Strategy, in documentation order.
var Strategies = []Strategy{StrategyCDICRI, StrategyCDIAnnotations, StrategyEnvvar}

// VisibleDevicesEnv is the variable NVIDIA's runtime hook reads.
const VisibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"

// ParseStrategies checks deviceListStrategy names and returns them without
// duplicates, in the given order. An empty list or an unknown name is an
// error wrapping ErrUnknownStrategy that names the valid ones.
func ParseStrategies(names []string) ([]Strategy, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: none given, want at least one of %s", ErrUnknownStrategy, validStrategies())
	}
	var out []Strategy
	for _, n := range names {
		s := Strategy(n)
		if !slices.Contains(Strategies, s) {
			return nil, fmt.Errorf("%w %q: valid are %s", ErrUnknownStrategy, n, validStrategies())
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

func validStrategies() string {
	names := make([]string, len(Strategies))
	for i, s := range Strategies {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// A Responder builds the Allocate response of one resource. Everything that
// does not depend on the allocated IDs (the CDI name prefix, the annotation
// key) is computed once, so Respond does no validation, I/O or lookup.
// A Responder is immutable and safe for concurrent use.
type Responder struct {
	prefix        string // "gpublocks.io/gpu="
	cri, envvar   bool
	annotationKey string // "" unless cdi-annotations
}

// NewResponder returns the Responder for resourceName (e.g.
// "nvidia.com/gpu-blocks") answering with the given strategies, which must
// have come from ParseStrategies.
//
// The annotation key is cdi.k8s.io/<vendor>_<resource name with "/" as "_">,
// e.g. cdi.k8s.io/gpublocks.io_nvidia.com_gpu-blocks: unique per resource,
// because the kubelet merges the annotations of all of a container's
// resources and a shared key would let one resource's devices hide
// another's. Should that exceed the 63 characters a key may have, the
// resource part becomes a hash of the name.
func NewResponder(kind Kind, resourceName string, strategies []Strategy) (*Responder, error) {
	if err := kind.Validate(); err != nil {
		return nil, err
	}
	if len(strategies) == 0 {
		return nil, fmt.Errorf("%w: none given, want at least one of %s", ErrUnknownStrategy, validStrategies())
	}
	r := &Responder{prefix: kind.QualifiedName("")}
	for _, s := range strategies {
		switch s {
		case StrategyCDICRI:
			r.cri = true
		case StrategyEnvvar:
			r.envvar = true
		case StrategyCDIAnnotations:
			key, err := annotationKey(kind, resourceName)
			if err != nil {
				return nil, err
			}
			r.annotationKey = key
		default:
			return nil, fmt.Errorf("%w %q: valid are %s", ErrUnknownStrategy, s, validStrategies())
		}
	}
	return r, nil
}

func annotationKey(kind Kind, resourceName string) (string, error) {
	key, err := cdiapi.AnnotationKey(kind.Vendor, resourceName)
	if err == nil {
		return key, nil
	}
	h := fnv.New32a()
	h.Write([]byte(resourceName))
	key, herr := cdiapi.AnnotationKey(kind.Vendor, fmt.Sprintf("r%08x", h.Sum32()))
	if herr != nil {
		return "", fmt.Errorf("%w: annotation key for %q: %w", ErrInvalidKind, resourceName, err)
	}
	return key, nil
}

// Respond returns what a container that was allocated the CDI devices ids
// receives: GPU UUIDs for whole GPUs and blocks (a block's GPU, once), MIG
// UUIDs for MIG devices. Duplicates are dropped. With only CDI strategies
// the response has no DeviceSpecs, Mounts or Envs: the CDI spec supplies
// them. Envs is nil unless the envvar strategy is on; callers adding their
// own variables must allocate it.
func (r *Responder) Respond(ids []string) *pluginapi.ContainerAllocateResponse {
	resp := &pluginapi.ContainerAllocateResponse{}
	ids = dedup(ids)
	if r.cri {
		resp.CdiDevices = make([]*pluginapi.CDIDevice, len(ids))
		for i, id := range ids {
			resp.CdiDevices[i] = &pluginapi.CDIDevice{Name: r.prefix + id}
		}
	}
	if r.annotationKey != "" {
		var b strings.Builder
		for i, id := range ids {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(r.prefix)
			b.WriteString(id)
		}
		resp.Annotations = map[string]string{r.annotationKey: b.String()}
	}
	if r.envvar {
		resp.Envs = map[string]string{VisibleDevicesEnv: strings.Join(ids, ",")}
	}
	return resp
}

// dedup drops repeated IDs, keeping the first; the input is not modified
// and, when it has no duplicates (the usual case), returned as is. Lists are
// short (a container's devices), so the quadratic scan beats a map.
func dedup(ids []string) []string {
	for i := 1; i < len(ids); i++ {
		if slices.Contains(ids[:i], ids[i]) {
			out := slices.Clone(ids[:i])
			for _, id := range ids[i+1:] {
				if !slices.Contains(out, id) {
					out = append(out, id)
				}
			}
			return out
		}
	}
	return ids
}

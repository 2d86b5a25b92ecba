package cdi

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
)

func TestParseStrategies(t *testing.T) {
	tests := map[string]struct {
		in      []string
		want    []Strategy
		wantErr []string // substrings of the error
	}{
		"default":           {in: []string{"cdi-cri"}, want: []Strategy{StrategyCDICRI}},
		"all, deduplicated": {in: []string{"envvar", "cdi-cri", "envvar", "cdi-annotations"}, want: []Strategy{StrategyEnvvar, StrategyCDICRI, StrategyCDIAnnotations}},
		"unknown":           {in: []string{"cdi-cri", "volume-mounts"}, wantErr: []string{`"volume-mounts"`, "cdi-cri, cdi-annotations, envvar"}},
		"empty":             {in: nil, wantErr: []string{"at least one"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseStrategies(tc.in)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, ErrUnknownStrategy)
				for _, s := range tc.wantErr {
					require.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRespond(t *testing.T) {
	const resource = "nvidia.com/mig-1g.10gb"
	ids := []string{uuidMIG0, uuidMIG1, uuidMIG0}
	names := []string{"gpublocks.io/gpu=" + uuidMIG0, "gpublocks.io/gpu=" + uuidMIG1}
	annKey := "cdi.k8s.io/gpublocks.io_nvidia.com_mig-1g.10gb"
	tests := map[string]struct {
		strategies []Strategy
		want       *pluginapi.ContainerAllocateResponse
	}{
		"cdi-cri": {
			strategies: []Strategy{StrategyCDICRI},
			want: &pluginapi.ContainerAllocateResponse{CdiDevices: []*pluginapi.CDIDevice{
				{Name: names[0]}, {Name: names[1]},
			}},
		},
		"cdi-annotations": {
			strategies: []Strategy{StrategyCDIAnnotations},
			want: &pluginapi.ContainerAllocateResponse{Annotations: map[string]string{
				annKey: strings.Join(names, ","),
			}},
		},
		"envvar": {
			strategies: []Strategy{StrategyEnvvar},
			want: &pluginapi.ContainerAllocateResponse{Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES": uuidMIG0 + "," + uuidMIG1,
			}},
		},
		"all three": {
			strategies: []Strategy{StrategyCDICRI, StrategyCDIAnnotations, StrategyEnvvar},
			want: &pluginapi.ContainerAllocateResponse{
				CdiDevices:  []*pluginapi.CDIDevice{{Name: names[0]}, {Name: names[1]}},
				Annotations: map[string]string{annKey: strings.Join(names, ",")},
				Envs:        map[string]string{"NVIDIA_VISIBLE_DEVICES": uuidMIG0 + "," + uuidMIG1},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := NewResponder(DefaultKind, resource, tc.strategies)
			require.NoError(t, err)
			got := r.Respond(ids)
			require.Equal(t, tc.want, got)
			require.Empty(t, got.Devices, "no DeviceSpecs")
			require.Empty(t, got.Mounts, "no Mounts")
			require.Equal(t, []string{uuidMIG0, uuidMIG1, uuidMIG0}, ids, "input untouched")
		})
	}
}

func TestRespondAnnotationsParse(t *testing.T) {
	// The runtime side must read back exactly our devices, and two of our
	// resources must not collide on one key.
	a, err := NewResponder(DefaultKind, "nvidia.com/gpu", []Strategy{StrategyCDIAnnotations})
	require.NoError(t, err)
	b, err := NewResponder(DefaultKind, "nvidia.com/gpu-blocks", []Strategy{StrategyCDIAnnotations})
	require.NoError(t, err)
	merged := map[string]string{}
	for k, v := range a.Respond([]string{uuidGPU0}).Annotations {
		merged[k] = v
	}
	for k, v := range b.Respond([]string{uuidGPU1}).Annotations {
		merged[k] = v
	}
	keys, devices, err := cdiapi.ParseAnnotations(merged)
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.ElementsMatch(t, []string{"gpublocks.io/gpu=" + uuidGPU0, "gpublocks.io/gpu=" + uuidGPU1}, devices)
}

func TestNewResponderLongResourceName(t *testing.T) {
	long := "accelerators.example.internal.company.com/gpu-blocks-for-training"
	r, err := NewResponder(DefaultKind, long, []Strategy{StrategyCDIAnnotations})
	require.NoError(t, err)
	for k := range r.Respond([]string{uuidGPU0}).Annotations {
		require.LessOrEqual(t, len(strings.TrimPrefix(k, cdiapi.AnnotationPrefix)), 63)
	}
	_, err = NewResponder(DefaultKind, "nvidia.com/gpu", nil)
	require.ErrorIs(t, err, ErrUnknownStrategy)
	_, err = NewResponder(DefaultKind, "nvidia.com/gpu", []Strategy{"bogus"})
	require.ErrorIs(t, err, ErrUnknownStrategy)
}

func TestQualifiedName(t *testing.T) {
	require.Equal(t, "gpublocks.io/gpu="+uuidGPU0, DefaultKind.QualifiedName(uuidGPU0))
	require.Equal(t, "example.com/accel=2:1", Kind{Vendor: "example.com", Class: "accel"}.QualifiedName("2:1"))
	require.Equal(t, "gpublocks.io-gpu.yaml", DefaultKind.SpecFileName())
}

func BenchmarkRespond(b *testing.B) {
	r, err := NewResponder(DefaultKind, "nvidia.com/gpu", []Strategy{StrategyCDICRI})
	require.NoError(b, err)
	ids := []string{uuidGPU0, uuidGPU1}
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Respond(ids)
	}
}

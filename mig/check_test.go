package mig_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/mig"
)

// TestCheckNode is what `config validate` and the daemon's loader run: the
// checks that need the GPU, each naming the rule and the GPU.
func TestCheckNode(t *testing.T) {
	b := simulate(t, `
gpus:
  - {model: A100-SXM4-80GB, mig: []}
  - {model: A100-SXM4-80GB}
  - {model: A100-SXM4-40GB, mig: [7g.40gb]}
  - {model: H100-SXM5-80GB, mig: []}
  - {model: H100-SXM5-80GB}
`)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)

	tests := map[string]struct {
		config string
		want   []string
		is     []error
	}{
		"fits": {config: `
gpus:
  - {match: {index: [0]}, shape: mig, mig: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}
  - {match: {index: [2]}, shape: mig, mig: [1g.5gb+me, 1g.5gb, 1g.10gb, 2g.10gb, 2g.10gb]}
  - {match: {index: [3]}, shape: mig}
  - {match: {model: "*"}, shape: whole}
`},
		"does not fit": {
			config: "gpus: [{match: {index: [0]}, shape: mig, mig: [3g.40gb, 3g.40gb, 1g.10gb]}]",
			want:   []string{"gpus[0] (shape: mig) on GPU 0 (GPU-", "1g.10gb does not fit beside 3g.40gb, 3g.40gb"},
			is:     []error{mig.ErrDoesNotFit},
		},
		"unknown for the model": {
			config: "gpus: [{match: {model: \"*A100*\"}, shape: mig, mig: [1g.20gb]}]",
			want:   []string{"gpus[0] (shape: mig) on GPU 2 (", `unknown MIG profile "1g.20gb"`, "NVIDIA A100-SXM4-40GB offers", "gpus[0] (shape: mig) on GPU 1 (", "enable MIG mode first"},
			is:     []error{mig.ErrUnknownProfile, mig.ErrDisabled},
		},
		"MIG off, keeping the layout": {
			config: "gpus: [{match: {index: [4]}, shape: mig}]",
			want:   []string{"gpus[0] (shape: mig) on GPU 4 (", "MIG mode is disabled on NVIDIA H100 80GB HBM3: enable MIG mode first"},
			is:     []error{mig.ErrDisabled},
		},
		"empty layout": {config: "gpus: [{match: {index: [3]}, shape: mig, mig: []}]"},
		"first rule wins": {config: `
gpus:
  - {match: {index: [1]}, shape: whole}
  - {match: {model: "*"}, shape: mig}
`, want: []string{"gpus[1] (shape: mig) on GPU 4 ("}, is: []error{mig.ErrDisabled}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.config))
			require.NoError(t, err)
			err = mig.CheckNode(b.NVML(), inv, cfg, mig.AsLayout)
			if len(tc.want) == 0 {
				require.NoError(t, err)
				return
			}
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			for _, is := range tc.is {
				require.ErrorIs(t, err, is)
			}
		})
	}
}

// TestCheckNodeAllowed: in DRA mode `mig:` lists the profiles a GPU may
// publish; they must exist on it but need not fit together.
func TestCheckNodeAllowed(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}, {model: A100-SXM4-40GB}]")
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	cfg, err := config.Parse([]byte("gpus: [{match: {index: [0]}, shape: mig, mig: [7g.80gb, 3g.40gb, 3g.40gb, 3g.40gb, 1g.10gb]}]"))
	require.NoError(t, err)
	require.NoError(t, mig.CheckNode(b.NVML(), inv, cfg, mig.AsAllowed))
	require.ErrorIs(t, mig.CheckNode(b.NVML(), inv, cfg, mig.AsLayout), mig.ErrDoesNotFit)

	cfg, err = config.Parse([]byte(`
gpus:
  - {match: {index: [0]}, shape: mig, mig: [1g.5gb, 1g.10gb]}
  - {match: {index: [1]}, shape: mig, mig: [1g.5gb]}
`))
	require.NoError(t, err)
	err = mig.CheckNode(b.NVML(), inv, cfg, mig.AsAllowed)
	require.ErrorIs(t, err, mig.ErrUnknownProfile)
	require.ErrorContains(t, err, `gpus[0] (shape: mig) on GPU 0 (`)
	require.ErrorContains(t, err, `unknown MIG profile "1g.5gb"`)
	require.ErrorIs(t, err, mig.ErrDisabled)
	require.ErrorContains(t, err, `gpus[1] (shape: mig) on GPU 1 (`)
}

func TestParseLayout(t *testing.T) {
	l, err := mig.ParseLayout([]string{"1g.10gb", "3g.40gb", "1g.10gb+me", "1g.10gb"})
	require.NoError(t, err)
	require.Equal(t, "[1g.10gb 1g.10gb 1g.10gb+me 3g.40gb]", l.String())
	require.True(t, l.Equal(mig.Layout{"3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb+me"}))
	require.False(t, l.Equal(mig.Layout{"3g.40gb", "1g.10gb", "1g.10gb+me"}))

	empty, err := mig.ParseLayout(nil)
	require.NoError(t, err)
	require.NotNil(t, empty, "an empty layout is not the absence of one")

	_, err = mig.ParseLayout([]string{"1g.10gb", "1g.10g", "7g"})
	require.ErrorIs(t, err, mig.ErrInvalidProfile)
	require.ErrorContains(t, err, `entry 1: invalid MIG profile "1g.10g"`)
	require.ErrorContains(t, err, `entry 2: invalid MIG profile "7g"`)

	_, err = mig.ParseLayout(make([]string, 9))
	require.ErrorIs(t, err, mig.ErrDoesNotFit)
}

func TestValidateProfile(t *testing.T) {
	tests := map[string]struct{ in, err string }{
		"plain":            {in: "1g.10gb"},
		"media extension":  {in: "1g.10gb+me"},
		"no media":         {in: "1g.23gb-me"},
		"large":            {in: "7g.80gb"},
		"compute instance": {in: "1c.3g.40gb", err: "such as 3g.40gb"},
		"full compute":     {in: "3c.3g.40gb", err: "compute instance profiles cannot be asked for"},
		"garbage":          {in: "big", err: `invalid MIG profile "big"`},
		"empty":            {in: "", err: "empty"},
		"space":            {in: " 1g.10gb", err: "spaces"},
		"both signs":       {in: "1g.10gb+me-me", err: "both"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := mig.ValidateProfile(tc.in)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, mig.ErrInvalidProfile)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

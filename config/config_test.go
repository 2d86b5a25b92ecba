package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		wantErr []string // substrings the error must contain
		check   func(t *testing.T, c *Config)
	}{
		"empty document gives defaults": {
			in: "",
			check: func(t *testing.T, c *Config) {
				require.Equal(t, Default(), c)
				require.Equal(t, "nvidia.com", c.ResourceDomain)
				require.Equal(t, MigMixed, c.MigStrategy)
				require.Equal(t, []string{ListCDICRI}, c.DeviceListStrategy)
				require.Equal(t, PolicyBinpack, c.Blocks.Policy)
				require.Equal(t, DefaultIgnoredXids, c.Health.IgnoredXids)
				require.Equal(t, 30*time.Second, c.Health.QuietPeriod.Duration)
			},
		},
		"full document": {
			in: `
version: v1
resourceDomain: example.com
migStrategy: single
deviceListStrategy: [cdi-annotations, envvar]
blocks: {resourceName: shares, policy: spread}
health: {ignoredXids: [13], quietPeriod: 2m}
gpus:
  - match: {index: [0, 1]}
    shape: blocks
  - match: {model: "*H100*"}
    shape: whole
`,
			check: func(t *testing.T, c *Config) {
				require.Equal(t, "example.com/shares", c.ResourceName(c.Blocks.ResourceName))
				require.Equal(t, []uint64{13}, c.Health.IgnoredXids)
				require.Equal(t, 2*time.Minute, c.Health.QuietPeriod.Duration)
				require.Equal(t, ShapeBlocks, c.ShapeFor(1, "GPU-x", "NVIDIA A100"))
				require.Equal(t, ShapeWhole, c.ShapeFor(2, "GPU-y", "NVIDIA H100 80GB HBM3"))
				require.Equal(t, ShapeWhole, c.ShapeFor(3, "GPU-z", "NVIDIA A100"))
			},
		},
		"empty ignore list stays empty": {
			in:    "health: {ignoredXids: []}",
			check: func(t *testing.T, c *Config) { require.Empty(t, c.Health.IgnoredXids) },
		},
		"uuid match": {
			in: "gpus: [{match: {uuid: [GPU-a]}, shape: blocks}]",
			check: func(t *testing.T, c *Config) {
				require.Equal(t, ShapeBlocks, c.ShapeFor(5, "GPU-a", "m"))
				require.Equal(t, ShapeWhole, c.ShapeFor(5, "GPU-b", "m"))
			},
		},
		"unknown nested key has full path": {
			in:      "blocks: {polcy: spread}",
			wantErr: []string{"unknown key blocks.polcy"},
		},
		"unknown key in a list": {
			in:      "gpus: [{match: {index: [0]}, shape: blocks, extra: 1}]",
			wantErr: []string{"gpus[0].extra"},
		},
		"unknown top-level keys all reported": {
			in:      "foo: 1\nbar: 2",
			wantErr: []string{"bar, foo"},
		},
		"bad values name key and choices": {
			in: `
version: v2
migStrategy: some
deviceListStrategy: [cdi, envvar, envvar]
blocks: {policy: random, resourceName: "A/B"}
health: {quietPeriod: 10ms}
gpus: [{match: {}, shape: mig}]
`,
			wantErr: []string{
				`version: "v2" is not supported; write "v1"`,
				`migStrategy: "some" is not one of none, single, mixed`,
				`deviceListStrategy[0]: "cdi"`,
				`deviceListStrategy[2]: "envvar" is listed twice`,
				`blocks.policy: "random"`,
				`blocks.resourceName: "A/B"`,
				`health.quietPeriod`,
				`gpus[0].shape: "mig"`,
				`gpus[0].match: set exactly one`,
			},
		},
		"wrong type": {
			in:      "gpus: [{match: {index: zero}, shape: blocks}]",
			wantErr: []string{"want"},
		},
		"bad duration names its key": {
			in:      "health: {quietPeriod: soon}",
			wantErr: []string{`health.quietPeriod: want a duration such as "30s", got "soon"`},
		},
		"unknown DRA taint effect": {
			in:      "health: {draTaintEffect: Evict}",
			wantErr: []string{`health.draTaintEffect: "Evict" is not one of NoSchedule, NoExecute`},
		},
		"zero duration is refused, not defaulted": {
			in:      "health: {quietPeriod: 0s}",
			wantErr: []string{`health.quietPeriod: 0s is too short`},
		},
		"unknown key and bad value together": {
			in:      "health: {quietPeriod: soon, extra: 1}",
			wantErr: []string{"unknown key health.extra", "health.quietPeriod: want a duration"},
		},
		"not a mapping": {
			in:      "- a\n- b",
			wantErr: []string{"must be a mapping"},
		},
		"blocks resource may not shadow whole GPUs": {
			in:      "blocks: {resourceName: gpu}",
			wantErr: []string{`blocks.resourceName: "gpu" is taken`},
		},
		"blocks resource may not shadow MIG": {
			in:      "blocks: {resourceName: mig-1g.10gb}",
			wantErr: []string{`blocks.resourceName: "mig-1g.10gb" is taken`},
		},
		"blocks resource must end alphanumeric": {
			in:      "blocks: {resourceName: gpu-}",
			wantErr: []string{`blocks.resourceName: "gpu-"`},
		},
		"empty match list": {
			in:      "gpus: [{match: {index: []}, shape: blocks}]",
			wantErr: []string{"gpus[0].match: an empty list matches no GPU"},
		},
		"bad domain": {
			in:      "resourceDomain: Nvidia_com",
			wantErr: []string{"resourceDomain"},
		},
		"bad glob": {
			in:      `gpus: [{match: {model: "[A100"}, shape: blocks}]`,
			wantErr: []string{"gpus[0].match.model"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, ErrInvalid)
				for _, w := range tc.wantErr {
					require.ErrorContains(t, err, w)
				}
				return
			}
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	// Mimic a ConfigMap volume: keys are symlinks into a ..data directory.
	data := filepath.Join(dir, "..2026_11_22")
	require.NoError(t, os.Mkdir(data, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(data, "default"), []byte("migStrategy: none\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(data, "blocks.yaml"), []byte("gpus: [{match: {index: [0]}, shape: blocks}]\n"), 0o644))
	require.NoError(t, os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")))
	for _, k := range []string{"default", "blocks.yaml"} {
		require.NoError(t, os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)))
	}
	file := filepath.Join(t.TempDir(), "one.yaml")
	require.NoError(t, os.WriteFile(file, []byte("blocks: {policy: spread}\n"), 0o644))

	tests := map[string]struct {
		path, label string
		wantErr     string
		check       func(t *testing.T, c *Config, s Source)
	}{
		"no path: defaults": {
			check: func(t *testing.T, c *Config, s Source) { require.Equal(t, Default(), c); require.Empty(t, s.Path) },
		},
		"single file": {
			path: file, label: "ignored",
			check: func(t *testing.T, c *Config, s Source) { require.Equal(t, PolicySpread, c.Blocks.Policy) },
		},
		"dir without label picks default": {
			path: dir,
			check: func(t *testing.T, c *Config, s Source) {
				require.Equal(t, MigNone, c.MigStrategy)
				require.Equal(t, DefaultName, s.Name)
				require.Contains(t, s.Reason, "no gpublocks.io/config label")
			},
		},
		"dir with label": {
			path: dir, label: "blocks",
			check: func(t *testing.T, c *Config, s Source) {
				require.Equal(t, ShapeBlocks, c.ShapeFor(0, "", ""))
				require.Equal(t, "blocks", s.Name)
				require.Contains(t, s.Reason, "gpublocks.io/config=blocks")
			},
		},
		"label naming nothing": {path: dir, label: "nope", wantErr: "names no config"},
		"missing path":         {path: filepath.Join(dir, "absent"), wantErr: "no such file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, s, err := Load(tc.path, tc.label)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			tc.check(t, c, s)
		})
	}
}

func TestLoadDirReportsEveryBadFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), []byte("polcy: x"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b"), []byte("version: v9"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "default"), []byte("version: v1"), 0o644))
	set, err := LoadDir(dir)
	require.NoError(t, err)
	require.ErrorContains(t, set.Err(), filepath.Join(dir, "a"))
	require.ErrorContains(t, set.Err(), filepath.Join(dir, "b"))
	require.Equal(t, []string{"a", "b", "default"}, set.Names())

	// One team's broken key does not stop the nodes using another.
	c, src, err := set.Pick("")
	require.NoError(t, err)
	require.Equal(t, Default(), c)
	require.Len(t, src.Others, 2)

	// A node that chose the broken key is told which key and why.
	_, _, err = set.Pick("a")
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, `config "a", chosen by node label gpublocks.io/config=a`)
	require.ErrorContains(t, err, "unknown key polcy")
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "version: v1", "blocks: {policy: spread}", "gpus: [{match: {index: [1]}, shape: blocks}]", "a: [", "health: {quietPeriod: 1s}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse([]byte(in))
		if err != nil {
			require.Nil(t, c)
			return
		}
		// Anything accepted is valid and fully defaulted.
		require.NoError(t, c.Validate())
		require.NotEmpty(t, c.DeviceListStrategy)
		_ = c.ShapeFor(0, "GPU-x", "m")
	})
}

package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLoadFileRefusesWhatIsNotARegularFile: a named pipe used to block the
// loader until some writer came (forever, in the daemon's watcher) and a
// symlink to /dev/zero was read until memory ran out. Neither is opened now.
func TestLoadFileRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	zero := filepath.Join(dir, "zero")
	require.NoError(t, os.Symlink("/dev/zero", zero))
	sub := filepath.Join(dir, "sub")
	require.NoError(t, os.Mkdir(sub, 0o755))

	tests := map[string]struct {
		path string
		want string
	}{
		"named pipe":             {path: fifo, want: fifo + " is a named pipe (FIFO); a config must be a regular file"},
		"symlink to a device":    {path: zero, want: zero + " is a character device"},
		"directory as a file":    {path: sub, want: sub + " is a directory"},
		"symlink loop":           {path: loop(t, dir), want: "too many levels of symbolic links"},
		"symlink to nothing":     {path: dangling(t, dir), want: "no such file or directory"},
		"pipe through --config":  {path: fifo, want: "named pipe"},
		"device through symlink": {path: zero, want: "at most 1 MiB"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := LoadFile(tc.path)
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, tc.path, "the error names the file")
		})
	}
	// Load (--config FILE) goes the same way.
	_, _, err := Load(fifo, "")
	require.ErrorContains(t, err, "named pipe")
}

func loop(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "loop")
	require.NoError(t, os.Symlink("loop", p))
	return p
}

func dangling(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "dangling")
	require.NoError(t, os.Symlink("absent", p))
	return p
}

// TestLoadFileSizeLimit: a config may be as big as a ConfigMap (1 MiB) and
// no bigger; a 50 MB file used to be read and held whole.
func TestLoadFileSizeLimit(t *testing.T) {
	dir := t.TempDir()
	doc := "version: v1\n"
	pad := "#" + strings.Repeat("x", 78) + "\n"
	var b strings.Builder
	b.WriteString(doc)
	for b.Len()+len(pad) <= MaxFileSize {
		b.WriteString(pad)
	}
	b.WriteString(strings.Repeat("#", MaxFileSize-b.Len()))
	require.Equal(t, MaxFileSize, b.Len())

	fits := filepath.Join(dir, "fits.yaml")
	require.NoError(t, os.WriteFile(fits, []byte(b.String()), 0o644))
	c, err := LoadFile(fits)
	require.NoError(t, err)
	require.Equal(t, Default(), c)

	big := filepath.Join(dir, "big.yaml")
	require.NoError(t, os.WriteFile(big, []byte(b.String()+"\n"), 0o644))
	_, err = LoadFile(big)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, big+" holds more than 1048576 bytes (1 MiB")

}

// TestParseBoundsLists: every list has a cap, checked before the document
// is decoded, and the error names the key and the cap.
func TestParseBoundsLists(t *testing.T) {
	list := func(n int, item string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(item+",", n), ",") + "]"
	}
	indexes := func(n int) string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprint(i))
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	tests := map[string]struct {
		in      string
		wantErr string
	}{
		"256 ignored XIDs": {in: "health: {ignoredXids: " + indexes(256) + "}"},
		"257 ignored XIDs": {
			in:      "health: {ignoredXids: " + indexes(257) + "}",
			wantErr: "health.ignoredXids: 257 entries, more than the 256 allowed",
		},
		"50000 ignored XIDs": {
			in:      "health: {ignoredXids: " + list(50_000, "1") + "}",
			wantErr: "health.ignoredXids: 50000 entries, more than the 256 allowed",
		},
		"256 rules": {in: "gpus: " + list(256, "{match: {index: [0]}, shape: blocks}")},
		"257 rules": {
			in:      "gpus: " + list(257, "{match: {index: [0]}, shape: blocks}"),
			wantErr: "gpus: 257 entries, more than the 256 allowed",
		},
		"1024 indexes": {in: "gpus: [{match: {index: " + indexes(1024) + "}, shape: blocks}]"},
		"1025 indexes": {
			in:      "gpus: [{shape: whole, match: {index: [0]}}, {match: {index: " + indexes(1025) + "}, shape: blocks}]",
			wantErr: "gpus[1].match.index: 1025 entries, more than the 1024 allowed",
		},
		"1025 uuids": {
			in:      "gpus: [{match: {uuid: " + list(1025, "GPU-x") + "}, shape: blocks}]",
			wantErr: "gpus[0].match.uuid: 1025 entries, more than the 1024 allowed",
		},
		"4 list strategies": {
			in:      "deviceListStrategy: [cdi-cri, envvar, cdi-cri, envvar]",
			wantErr: "deviceListStrategy: 4 entries, more than the 3 allowed",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// TestParseErrorsStayReadable: a document full of mistakes gets a message
// that lists some and counts the rest, not one as big as the document.
func TestParseErrorsStayReadable(t *testing.T) {
	var b strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&b, "k%04d: 1\n", i)
	}
	_, err := Parse([]byte(b.String()))
	require.ErrorContains(t, err, "unknown key k0000, k0001")
	require.ErrorContains(t, err, "and 980 more")
	require.Less(t, len(err.Error()), 1000)

	b.Reset()
	b.WriteString("gpus: [{match: {index: [")
	for i := range 1000 {
		fmt.Fprintf(&b, "-%d,", i+1)
	}
	b.WriteString("]}, shape: blocks}]")
	_, err = Parse([]byte(b.String()))
	require.ErrorContains(t, err, "gpus[0].match.index[0]: -1 is negative")
	require.ErrorContains(t, err, "and 980 more problems")
	require.Less(t, len(err.Error()), 2000)
}

// TestLoadDirReportsEachKeysRealError: a key that cannot be read is a bad
// config with its own error. A ..data symlink loop used to read as "holds
// no config files", and a named pipe blocked the loader.
func TestLoadDirReportsEachKeysRealError(t *testing.T) {
	t.Run("..data loop", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.Symlink("..data", filepath.Join(dir, "..data")))
		for _, k := range []string{"default", "team-b"} {
			require.NoError(t, os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)))
		}
		_, _, err := Load(dir, "")
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorContains(t, err, filepath.Join(dir, "default"))
		require.ErrorContains(t, err, "too many levels of symbolic links")
		require.NotContains(t, err.Error(), "holds no config files")

		set, err := LoadDir(dir)
		require.NoError(t, err)
		require.Equal(t, []string{"default", "team-b"}, set.Names())
		require.ErrorContains(t, set.Err(), filepath.Join(dir, "team-b"))
	})
	t.Run("broken keys beside a good default", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "default"), []byte("version: v1\n"), 0o644))
		require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644))
		require.NoError(t, os.Symlink("/dev/zero", filepath.Join(dir, "zero")))
		require.NoError(t, os.Symlink("..data/gone", filepath.Join(dir, "gone")))
		require.NoError(t, os.Mkdir(filepath.Join(dir, "subdir"), 0o755))

		c, src, err := Load(dir, "")
		require.NoError(t, err)
		require.Equal(t, Default(), c)
		require.Len(t, src.Others, 3)

		_, _, err = Load(dir, "pipe")
		require.ErrorContains(t, err, `config "pipe", chosen by node label gpublocks.io/config=pipe`)
		require.ErrorContains(t, err, filepath.Join(dir, "pipe")+" is a named pipe")
		_, _, err = Load(dir, "zero")
		require.ErrorContains(t, err, "is a character device")
		_, _, err = Load(dir, "gone")
		require.ErrorContains(t, err, filepath.Join(dir, "gone")+": no such file or directory")
		_, _, err = Load(dir, "subdir")
		require.ErrorContains(t, err, "names no config")
	})
}

// TestEveryListHasACap: each list in Config says how long it may be (its
// maxItems tag), and the schema enforces it.
func TestEveryListHasACap(t *testing.T) {
	var check func(rt reflect.Type, s *schema, path string)
	check = func(rt reflect.Type, s *schema, path string) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || s.fields == nil {
			return
		}
		for i := range rt.NumField() {
			f := rt.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fs := s.fields[name]
			if fs == nil {
				continue
			}
			p := strings.TrimPrefix(path+"."+name, ".")
			if f.Type.Kind() == reflect.Slice {
				n, err := strconv.Atoi(f.Tag.Get("maxItems"))
				require.NoError(t, err, "%s needs a maxItems tag", p)
				require.Equal(t, n, fs.maxItems, p)
				fs = fs.elem
			}
			check(f.Type, fs, p)
		}
	}
	check(reflect.TypeFor[Config](), configSchema, "")
}

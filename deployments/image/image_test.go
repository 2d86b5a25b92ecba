package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
	"github.com/ulikunitz/xz"
)

// debEntry is one member of a data.tar written by writeDeb.
type debEntry struct {
	name, link string
	typ        byte
	data       []byte
	mode       int64
}

// writeDeb writes a Debian package (ar archive with debian-binary,
// control.tar.gz and data.tar.<comp>) holding entries.
func writeDeb(t *testing.T, path, comp string, entries []debEntry) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}))
	for _, e := range entries {
		h := &tar.Header{Name: "./" + strings.TrimPrefix(e.name, "/"), Typeflag: e.typ, Mode: e.mode, Linkname: e.link}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		require.NoError(t, tw.WriteHeader(h))
		if e.typ == tar.TypeReg {
			_, err := tw.Write(e.data)
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	var data bytes.Buffer
	switch comp {
	case "xz":
		w, err := xz.NewWriter(&data)
		require.NoError(t, err)
		_, err = w.Write(tarBuf.Bytes())
		require.NoError(t, err)
		require.NoError(t, w.Close())
	case "zst":
		w, err := zstd.NewWriter(&data)
		require.NoError(t, err)
		_, err = w.Write(tarBuf.Bytes())
		require.NoError(t, err)
		require.NoError(t, w.Close())
	case "gz":
		w := gzip.NewWriter(&data)
		_, err := w.Write(tarBuf.Bytes())
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	member := func(n string, body []byte) {
		fmt.Fprintf(&ar, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", n, 0, 0, 0, "100644", len(body))
		ar.Write(body)
		if len(body)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	member("debian-binary", []byte("2.0\n"))
	member("control.tar.gz", []byte("x")) // odd size: exercises padding
	member("data.tar."+comp, data.Bytes())
	require.NoError(t, os.WriteFile(path, ar.Bytes(), 0o644))
}

// hostRuntime builds a package holding the host's own C runtime, and picks
// a host binary that needs it, so the tests link-check real ELF files
// without downloading anything.
func hostRuntime(t *testing.T, dir string) (deb, binary string) {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("host runtime fixture is laid out for amd64 Debian")
	}
	var entries []debEntry
	for _, p := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("host has no %s: %v", p, err)
		}
		entries = append(entries, debEntry{name: p, typ: tar.TypeReg, data: data, mode: 0o755})
	}
	entries = append(entries,
		debEntry{name: "/lib64/ld-linux-x86-64.so.2", typ: tar.TypeSymlink, link: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", mode: 0o777},
		debEntry{name: "/usr/share/doc/libc6/copyright", typ: tar.TypeReg, data: []byte("LGPL"), mode: 0o644},
		debEntry{name: "/usr/share/doc/libc6/changelog.gz", typ: tar.TypeReg, data: []byte("dropped"), mode: 0o644},
	)
	deb = filepath.Join(dir, "libc6_test_amd64.deb")
	writeDeb(t, deb, "xz", entries)
	return deb, "/bin/true"
}

func testSpec(t *testing.T) Spec {
	t.Helper()
	dir := t.TempDir()
	deb, bin := hostRuntime(t, dir)
	license := filepath.Join(dir, "LICENSE")
	require.NoError(t, os.WriteFile(license, []byte("Apache License 2.0\n"), 0o644))
	return Spec{
		Binary: bin, DRABinary: bin, License: license, Packages: []string{deb}, Arch: "amd64",
		Created: time.Unix(1_780_000_000, 0),
		Labels: map[string]string{
			AnnotationSource: "https://github.com/gpublocks/gpublocks", AnnotationRevision: "abc123",
			AnnotationVersion: "v0.1.0", AnnotationLicenses: "Apache-2.0 AND LGPL-2.1-or-later",
		},
	}
}

func archive(t *testing.T, s Spec) (v1.Hash, []byte) {
	t.Helper()
	img, err := Build(s)
	require.NoError(t, err)
	d, err := img.Digest()
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, WriteArchive(&buf, img, name.MustParseReference("ghcr.io/gpublocks/gpublocks:v0.1.0").(name.Tag), s.Created))
	return d, buf.Bytes()
}

func TestReproducible(t *testing.T) {
	s := testSpec(t)
	d1, a1 := archive(t, s)
	d2, a2 := archive(t, s)
	require.Equal(t, d1, d2, "same inputs must give the same digest")
	require.True(t, bytes.Equal(a1, a2), "same inputs must give the same archive bytes")

	s.Created = s.Created.Add(time.Second)
	d3, _ := archive(t, s)
	require.NotEqual(t, d1, d3, "the timestamp is an input")
	s.Labels[AnnotationRevision] = "def456"
	d4, _ := archive(t, s)
	require.NotEqual(t, d3, d4, "labels are inputs")
}

// untar reads a tar stream into name → bytes.
func untar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		if h.Typeflag == tar.TypeSymlink {
			data = []byte("-> " + h.Linkname)
		}
		out[h.Name] = data
	}
}

func TestArchiveLayout(t *testing.T) {
	s := testSpec(t)
	digest, raw := archive(t, s)
	files := untar(t, bytes.NewReader(raw))
	require.JSONEq(t, `{"imageLayoutVersion":"1.0.0"}`, string(files["oci-layout"]))

	var index v1.IndexManifest
	require.NoError(t, json.Unmarshal(files["index.json"], &index))
	require.Len(t, index.Manifests, 1)
	desc := index.Manifests[0]
	require.Equal(t, digest, desc.Digest)
	require.Equal(t, "ghcr.io/gpublocks/gpublocks:v0.1.0", desc.Annotations[AnnotationImageName], "containerd names the imported image after this")
	require.Equal(t, "v0.1.0", desc.Annotations[AnnotationRefName])

	var m v1.Manifest
	require.NoError(t, json.Unmarshal(files["blobs/sha256/"+digest.Hex], &m))
	for k, v := range s.Labels {
		require.Equal(t, v, m.Annotations[k], k)
	}
	require.Len(t, m.Layers, 2)

	var cf v1.ConfigFile
	require.NoError(t, json.Unmarshal(files["blobs/sha256/"+m.Config.Digest.Hex], &cf))
	require.Equal(t, []string{BinaryPath}, cf.Config.Entrypoint)
	require.Equal(t, "amd64", cf.Architecture)
	require.Equal(t, s.Created.UTC(), cf.Created.UTC())

	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	require.NoError(t, json.Unmarshal(files["manifest.json"], &docker))
	require.Equal(t, []string{"ghcr.io/gpublocks/gpublocks:v0.1.0"}, docker[0].RepoTags)
	for _, l := range docker[0].Layers {
		require.Contains(t, files, l)
	}

	// The runtime layer keeps copyright files and drops other docs; the
	// app layer holds the binary and the license.
	rt, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+m.Layers[0].Digest.Hex]))
	require.NoError(t, err)
	base := untar(t, rt)
	require.Contains(t, base, "lib/x86_64-linux-gnu/libc.so.6")
	require.Contains(t, base, "usr/share/doc/libc6/copyright")
	require.NotContains(t, base, "usr/share/doc/libc6/changelog.gz")
	require.NotContains(t, base, "/", "the package's ./ is not an entry")
	at, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+m.Layers[1].Digest.Hex]))
	require.NoError(t, err)
	app := untar(t, at)
	require.Contains(t, app, "usr/bin/gpublocks")
	require.Contains(t, app, "usr/bin/gpublocks-dra", "gpublocks runs it for --kubelet-api dra")
	require.Equal(t, "Apache License 2.0\n", string(app["usr/share/doc/gpublocks/LICENSE"]))
}

func TestMissingRuntimeIsAnError(t *testing.T) {
	s := testSpec(t)
	dir := t.TempDir()
	noLibc := filepath.Join(dir, "empty.deb")
	writeDeb(t, noLibc, "gz", []debEntry{{name: "/etc/placeholder", typ: tar.TypeReg, data: []byte("x"), mode: 0o644}})
	s.Packages = []string{noLibc}
	_, err := Build(s)
	require.ErrorIs(t, err, ErrUnresolved)
	require.Contains(t, err.Error(), "ld-linux-x86-64.so.2", "the loader is checked first and named")

	// A loader but no libc.
	s2 := testSpec(t)
	only := filepath.Join(dir, "loader.deb")
	ld, err := os.ReadFile("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
	require.NoError(t, err)
	writeDeb(t, only, "zst", []debEntry{{name: "/lib64/ld-linux-x86-64.so.2", typ: tar.TypeReg, data: ld, mode: 0o755}})
	s2.Packages = []string{only}
	_, err = Build(s2)
	require.ErrorIs(t, err, ErrUnresolved)
	require.Contains(t, err.Error(), "libc.so.6 needed by /usr/bin/gpublocks")

	// The DRA binary's linking is checked as well.
	// /bin/ls needs libselinux.so.1, which the test runtime lacks.
	s3 := testSpec(t)
	if _, err := os.Stat("/bin/ls"); err != nil {
		t.Skipf("no /bin/ls: %v", err)
	}
	s3.DRABinary = "/bin/ls"
	_, err = Build(s3)
	require.ErrorIs(t, err, ErrUnresolved)
	require.Contains(t, err.Error(), "needed by /usr/bin/gpublocks-dra")
}

func TestReadDeb(t *testing.T) {
	for _, comp := range []string{"xz", "zst", "gz"} {
		t.Run(comp, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "p.deb")
			writeDeb(t, p, comp, []debEntry{
				{name: "/usr/lib/a.so", typ: tar.TypeReg, data: []byte("A"), mode: 0o644},
				{name: "/usr/lib/b.so", typ: tar.TypeLink, link: "./usr/lib/a.so"},
				{name: "/usr/lib/c.so", typ: tar.TypeSymlink, link: "a.so", mode: 0o777},
				{name: "/dev/null", typ: tar.TypeChar},
			})
			files, err := ReadDebFile(p)
			require.NoError(t, err)
			got := map[string]File{}
			for _, f := range files {
				got[f.Path] = f
			}
			require.Equal(t, "A", string(got["/usr/lib/b.so"].Data), "hard links become copies")
			require.Equal(t, "a.so", got["/usr/lib/c.so"].Linkname)
			require.NotContains(t, got, "/dev/null", "device nodes are dropped")
		})
	}
	t.Run("not a package", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "x.deb")
		require.NoError(t, os.WriteFile(p, []byte("hello"), 0o644))
		_, err := ReadDebFile(p)
		require.ErrorIs(t, err, ErrBadPackage)
	})
}

func TestUsrMerge(t *testing.T) {
	tr := newTree([]File{{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Type: tar.TypeReg, Data: []byte("x")}})
	tr.usrMerge()
	f, ok := tr.resolve("/lib/x86_64-linux-gnu/libc.so.6")
	require.True(t, ok, "the /lib link reaches /usr/lib")
	require.Equal(t, "/usr/lib/x86_64-linux-gnu/libc.so.6", f.Path)
}

// TestBuiltImageRuns checks the archive `make image` built: the binary in
// it starts with the image's own C runtime (chroot, so root only).
func TestBuiltImageRuns(t *testing.T) {
	archivePath := os.Getenv("GPUBLOCKS_IMAGE")
	if archivePath == "" {
		t.Skip("GPUBLOCKS_IMAGE not set: run through `make test-deployments`, which builds the image first")
	}
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	f, err := os.Open(archivePath)
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	files := untar(t, f)
	var docker []struct{ Layers []string }
	require.NoError(t, json.Unmarshal(files["manifest.json"], &docker))
	root := t.TempDir()
	for _, l := range docker[0].Layers {
		cmd := exec.Command("tar", "-xzf", "-", "-C", root)
		cmd.Stdin = bytes.NewReader(files[l])
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
	}
	for _, bin := range []string{"gpublocks", "gpublocks-dra"} {
		out, err := exec.Command("chroot", root, bin, "version").CombinedOutput()
		require.NoError(t, err, string(out))
		require.Contains(t, string(out), "gpublocks ")
		t.Logf("in the image: %s: %s", bin, strings.TrimSpace(string(out)))
	}
}

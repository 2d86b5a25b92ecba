package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrUnresolved means the binary needs a shared library (or loader) that
// none of the packages provides.
var ErrUnresolved = errors.New("shared library not provided by any package")

// OCI annotation keys (image-spec annotations.md).
const (
	AnnotationCreated     = "org.opencontainers.image.created"
	AnnotationSource      = "org.opencontainers.image.source"
	AnnotationRevision    = "org.opencontainers.image.revision"
	AnnotationVersion     = "org.opencontainers.image.version"
	AnnotationLicenses    = "org.opencontainers.image.licenses"
	AnnotationTitle       = "org.opencontainers.image.title"
	AnnotationDescription = "org.opencontainers.image.description"
	AnnotationRefName     = "org.opencontainers.image.ref.name"
	// AnnotationImageName is the full reference containerd's importer
	// names the image after.
	AnnotationImageName = "io.containerd.image.name"
)

// BinaryPath is where the image holds gpublocks; the chart runs `gpublocks`
// from PATH.
const BinaryPath = "/usr/bin/gpublocks"

// DRABinaryPath is where the image holds gpublocks-dra, which `gpublocks
// serve --kubelet-api dra` runs from beside itself.
const DRABinaryPath = "/usr/bin/gpublocks-dra"

// Spec is everything an image is made from. The same Spec gives the same
// image digest.
type Spec struct {
	Binary string // the built gpublocks binary
	// DRABinary is the built gpublocks-dra binary (DRA mode); "" leaves
	// it out.
	DRABinary string
	License   string   // the project's LICENSE file
	Packages  []string // verified .deb files holding the C runtime
	Arch      string   // GOARCH of Binary: amd64, arm64
	Created   time.Time
	// Labels become the manifest's annotations and the config's labels.
	Labels map[string]string
}

// Build assembles the image: one layer with the packages' runtime files,
// one with gpublocks and its license. It fails when the binary needs a
// loader or library that the packages do not provide, so an image that
// builds is one whose binary can start.
func Build(s Spec) (v1.Image, error) {
	created := s.Created.UTC().Truncate(time.Second)
	var runtime []File
	for _, deb := range s.Packages {
		files, err := ReadDebFile(deb)
		if err != nil {
			return nil, err
		}
		runtime = append(runtime, keepRuntime(files)...)
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, err
	}
	license, err := os.ReadFile(s.License)
	if err != nil {
		return nil, err
	}
	app := []File{
		{Path: BinaryPath, Type: tar.TypeReg, Mode: 0o755, Data: bin, Source: s.Binary},
		{Path: "/usr/share/doc/gpublocks/LICENSE", Type: tar.TypeReg, Mode: 0o644, Data: license, Source: s.License},
	}
	bins := []string{BinaryPath}
	if s.DRABinary != "" {
		dra, err := os.ReadFile(s.DRABinary)
		if err != nil {
			return nil, err
		}
		app = append(app, File{Path: DRABinaryPath, Type: tar.TypeReg, Mode: 0o755, Data: dra, Source: s.DRABinary})
		bins = append(bins, DRABinaryPath)
	}
	base := newTree(runtime)
	base.usrMerge()
	whole := newTree(append(base.files(), app...))
	for _, b := range bins {
		if err := whole.checkLinking(b, s.Arch); err != nil {
			return nil, err
		}
	}

	img := empty.Image
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range []struct {
		files []File
		by    string
	}{
		{base.files(), "C runtime from Debian packages " + strings.Join(baseNames(s.Packages), ", ")},
		{newTree(app).files(), "gpublocks " + s.Labels[AnnotationVersion]},
	} {
		layer, err := tarLayer(l.files, created)
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: l.by},
		})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = s.Arch, "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		Entrypoint: []string{BinaryPath},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels:     s.Labels,
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	return mutate.Annotations(img, s.Labels).(v1.Image), nil
}

// keepRuntime drops documentation (except copyright files, which the
// licenses require) and other files no process in the image reads.
func keepRuntime(files []File) []File {
	out := files[:0:0]
	for _, f := range files {
		switch {
		case strings.HasPrefix(f.Path, "/usr/share/doc/") && f.Type == tar.TypeReg && path.Base(f.Path) != "copyright":
		case strings.HasPrefix(f.Path, "/usr/share/lintian"), strings.HasPrefix(f.Path, "/usr/share/man"):
		default:
			out = append(out, f)
		}
	}
	return out
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = path.Base(p)
	}
	return out
}

// tarLayer writes files as a gzip-compressed OCI layer whose bytes depend
// on nothing but the files and the timestamp.
func tarLayer(files []File, created time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name:     strings.TrimPrefix(f.Path, "/"),
			Typeflag: f.Type,
			Mode:     f.Mode,
			ModTime:  created,
			Linkname: f.Linkname,
			Format:   tar.FormatPAX,
		}
		switch f.Type {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.Type == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// tree is an image file system under construction, keyed by path.
type tree map[string]File

func newTree(files []File) tree {
	t := tree{}
	for _, f := range files {
		t.add(f)
	}
	return t
}

// add puts f in the tree with any missing parent directories.
func (t tree) add(f File) {
	for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
		if _, ok := t[dir]; ok {
			break
		}
		t[dir] = File{Path: dir, Type: tar.TypeDir, Mode: 0o755, Source: f.Source}
	}
	t[f.Path] = f
}

// files lists the tree sorted by path (parents before children).
func (t tree) files() []File {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]File, len(keys))
	for i, k := range keys {
		out[i] = t[k]
	}
	return out
}

// usrMerge adds the merged-/usr links (/lib → usr/lib, …) when packages
// install under /usr only, as Debian 13 and later do: the loader's path
// baked into binaries is /lib64/… or /lib/….
func (t tree) usrMerge() {
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if _, ok := t["/"+top]; ok {
			continue
		}
		if f, ok := t["/usr/"+top]; ok && f.Type == tar.TypeDir {
			t["/"+top] = File{Path: "/" + top, Type: tar.TypeSymlink, Mode: 0o777, Linkname: "usr/" + top, Source: "merged /usr"}
		}
	}
}

// resolve follows symlinks inside the tree to a regular file.
func (t tree) resolve(p string) (File, bool) {
	for range 40 {
		// Resolve the directories on the way first.
		p = t.resolveDirs(p)
		f, ok := t[p]
		if !ok {
			return File{}, false
		}
		if f.Type != tar.TypeSymlink {
			return f, f.Type == tar.TypeReg
		}
		if path.IsAbs(f.Linkname) {
			p = path.Clean(f.Linkname)
		} else {
			p = path.Join(path.Dir(p), f.Linkname)
		}
	}
	return File{}, false
}

// resolveDirs replaces symlinked directories in p's parents by their
// targets.
func (t tree) resolveDirs(p string) string {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := path.Join(cur, part)
		if i < len(parts)-1 {
			for range 40 {
				f, ok := t[next]
				if !ok || f.Type != tar.TypeSymlink {
					break
				}
				if path.IsAbs(f.Linkname) {
					next = path.Clean(f.Linkname)
				} else {
					next = path.Join(path.Dir(next), f.Linkname)
				}
			}
		}
		cur = next
	}
	return cur
}

// triplets are Debian's multiarch directories by GOARCH.
var triplets = map[string]string{
	"amd64":   "x86_64-linux-gnu",
	"arm64":   "aarch64-linux-gnu",
	"ppc64le": "powerpc64le-linux-gnu",
	"s390x":   "s390x-linux-gnu",
}

// checkLinking proves that the ELF loader and every shared library the
// binary needs, transitively, are in the tree, as the loader would find
// them in its default directories.
func (t tree) checkLinking(binary, arch string) error {
	triplet, ok := triplets[arch]
	if !ok {
		return fmt.Errorf("architecture %q: no Debian multiarch directory known (use one of amd64, arm64, ppc64le, s390x)", arch)
	}
	dirs := []string{"/lib/" + triplet, "/usr/lib/" + triplet, "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	seen := map[string]bool{}
	var visit func(p, neededBy string) error
	visit = func(p, neededBy string) error {
		f, _ := t.resolve(p)
		ef, err := elf.NewFile(bytes.NewReader(f.Data))
		if err != nil {
			return fmt.Errorf("%s (needed by %s) is not an ELF file: %w", p, neededBy, err)
		}
		defer func() { _ = ef.Close() }()
		for _, prog := range ef.Progs {
			if prog.Type != elf.PT_INTERP {
				continue
			}
			raw, err := io.ReadAll(prog.Open())
			if err != nil {
				return err
			}
			interp := strings.TrimRight(string(raw), "\x00")
			if _, ok := t.resolve(interp); !ok {
				return fmt.Errorf("%w: the ELF loader %s of %s (add the package that holds it, e.g. libc6)", ErrUnresolved, interp, p)
			}
		}
		libs, err := ef.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, lib := range libs {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			found := ""
			for _, d := range dirs {
				if _, ok := t.resolve(path.Join(d, lib)); ok {
					found = path.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%w: %s needed by %s is in none of %s (add the Debian package that holds it)", ErrUnresolved, lib, p, strings.Join(dirs, ", "))
			}
			if err := visit(found, p); err != nil {
				return err
			}
		}
		return nil
	}
	if _, ok := t.resolve(binary); !ok {
		return fmt.Errorf("%s is not a regular file in the image", binary)
	}
	return visit(binary, "the image")
}

package image

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// WriteArchive writes img as one tar file holding an OCI image layout
// (oci-layout, index.json, blobs/sha256/…) whose index names the image ref,
// plus a Docker-style manifest.json over the same blobs, so that
// `ctr images import`, `skopeo copy oci-archive:`, `crane push` and
// `docker load` all accept it. Entries are in a fixed order with the given
// time, so equal images give equal archives.
func WriteArchive(w io.Writer, img v1.Image, ref name.Tag, mtime time.Time) error {
	mtime = mtime.UTC().Truncate(time.Second)
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}

	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: types.OCIManifestSchema1,
			Digest:    digest,
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				AnnotationImageName: ref.Name(),
				AnnotationRefName:   ref.TagStr(),
			},
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	docker := []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blob(configName), RepoTags: []string{ref.Name()}}}

	tw := tar.NewWriter(w)
	dir := func(n string) error {
		return tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(n string, size int64, body func(io.Writer) error) error {
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		return body(tw)
	}
	bytesOf := func(b []byte) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(b); return err }
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	written := map[v1.Hash]bool{}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return err
		}
		docker[0].Layers = append(docker[0].Layers, blob(h))
		if written[h] {
			continue
		}
		written[h] = true
		size, err := l.Size()
		if err != nil {
			return err
		}
		err = file(blob(h), size, func(w io.Writer) error {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			defer func() { _ = rc.Close() }()
			n, err := io.Copy(w, rc)
			if err == nil && n != size {
				err = fmt.Errorf("layer %s: wrote %d bytes, expected %d", h, n, size)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	if err := file(blob(configName), int64(len(config)), bytesOf(config)); err != nil {
		return err
	}
	if err := file(blob(digest), int64(len(manifest)), bytesOf(manifest)); err != nil {
		return err
	}
	if err := file("index.json", int64(len(indexJSON)), bytesOf(indexJSON)); err != nil {
		return err
	}
	dockerJSON, err := json.Marshal(docker)
	if err != nil {
		return err
	}
	if err := file("manifest.json", int64(len(dockerJSON)), bytesOf(dockerJSON)); err != nil {
		return err
	}
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	if err := file("oci-layout", int64(len(layout)), bytesOf(layout)); err != nil {
		return err
	}
	return tw.Close()
}

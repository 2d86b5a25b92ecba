// Command gpublocks-image builds gpublocks' OCI image archive without a
// container engine (`make image`; see package image and README.md).
package main

import (
	"context"
	"debug/elf"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/deployments/image"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gpublocks-image:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		binary   = flag.String("binary", "bin/gpublocks", "the built gpublocks binary")
		draBin   = flag.String("dra-binary", "", "the built gpublocks-dra binary (DRA mode); empty leaves it out")
		license  = flag.String("license", "LICENSE", "the project's license file")
		chart    = flag.String("chart", "deployments/helm/gpublocks", "the Helm chart whose image.repository and appVersion name the image")
		output   = flag.String("output", "bin/gpublocks-image.tar", "the archive to write")
		cache    = flag.String("cache", "bin/debs", "where verified Debian packages are kept between builds")
		packages = flag.String("packages", "libc6,libgcc-s1", "Debian packages that provide the C runtime the binary needs")
		ref      = flag.String("ref", "", "image reference (default: the chart's image.repository:appVersion)")
		version  = flag.String("version", "", "version label (default: the image tag)")
		revision = flag.String("revision", "", "source revision label (the git commit)")
		created  = flag.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "image time in Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	meta, err := readChart(*chart)
	if err != nil {
		return err
	}
	if *ref == "" {
		*ref = meta.repository + ":" + meta.appVersion
	}
	tag, err := name.NewTag(*ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("--ref %q: %w (want REGISTRY/REPOSITORY:TAG)", *ref, err)
	}
	if *version == "" {
		*version = tag.TagStr()
	}
	when := time.Unix(0, 0)
	if *created != "" {
		secs, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			return fmt.Errorf("--created %q: want Unix seconds: %w", *created, err)
		}
		when = time.Unix(secs, 0)
	}
	arch, err := binaryArch(*binary)
	if err != nil {
		return err
	}
	pkgs, err := image.FetchPackages(ctx, *cache, debArch(arch), strings.Split(*packages, ","))
	if err != nil {
		return err
	}
	var debs, described []string
	for _, p := range pkgs {
		debs = append(debs, p.File)
		described = append(described, p.Name+" "+p.Version)
	}
	labels := map[string]string{
		image.AnnotationTitle:       "gpublocks",
		image.AnnotationDescription: "Kubernetes GPU driver sharing NVIDIA GPUs whole, as MIG devices or as blocks; C runtime from Debian " + strings.Join(described, ", "),
		image.AnnotationSource:      meta.source,
		image.AnnotationVersion:     *version,
		image.AnnotationLicenses:    "Apache-2.0 AND LGPL-2.1-or-later",
		image.AnnotationCreated:     when.UTC().Format(time.RFC3339),
	}
	if *revision != "" {
		labels[image.AnnotationRevision] = *revision
	}
	img, err := image.Build(image.Spec{
		Binary: *binary, DRABinary: *draBin, License: *license, Packages: debs, Arch: arch, Created: when, Labels: labels,
	})
	if err != nil {
		return err
	}
	if err := writeAtomic(*output, func(f *os.File) error { return image.WriteArchive(f, img, tag, when) }); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	st, err := os.Stat(*output)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s@%s (%s, %.1f MiB; %s)\n", *output, tag.Name(), digest, arch, float64(st.Size())/(1<<20), strings.Join(described, ", "))
	return nil
}

type chartMeta struct{ repository, appVersion, source string }

// readChart takes the image's name from the chart, so that `make image`
// builds exactly the reference the chart and manifests use by default.
func readChart(dir string) (chartMeta, error) {
	var chart struct {
		AppVersion string   `json:"appVersion"`
		Sources    []string `json:"sources"`
	}
	var values struct {
		Image struct {
			Repository string `json:"repository"`
		} `json:"image"`
	}
	for file, into := range map[string]any{"Chart.yaml": &chart, "values.yaml": &values} {
		raw, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			return chartMeta{}, err
		}
		if err := yaml.Unmarshal(raw, into); err != nil {
			return chartMeta{}, fmt.Errorf("%s: %w", filepath.Join(dir, file), err)
		}
	}
	if chart.AppVersion == "" || values.Image.Repository == "" {
		return chartMeta{}, fmt.Errorf("%s: Chart.yaml appVersion and values.yaml image.repository must be set", dir)
	}
	m := chartMeta{repository: values.Image.Repository, appVersion: chart.AppVersion}
	if len(chart.Sources) > 0 {
		m.source = chart.Sources[0]
	}
	return m, nil
}

// binaryArch reads the GOARCH the binary was built for from its ELF header.
func binaryArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w (run `make build` first)", path, err)
	}
	defer func() { _ = f.Close() }()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	}
	return "", fmt.Errorf("%s: unsupported machine %s", path, f.Machine)
}

// debArch maps GOARCH to Debian's architecture name.
func debArch(goarch string) string {
	if goarch == "ppc64le" {
		return "ppc64el"
	}
	return goarch
}

// writeAtomic writes path through a temporary file in its directory, so
// that an interrupted build never leaves a truncated archive behind.
func writeAtomic(path string, write func(*os.File) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".gpublocks-image-*.tmp")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(f.Name()) }()
	if err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

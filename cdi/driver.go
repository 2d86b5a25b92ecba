package cdi

import (
	"cmp"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/gpu"
)

// driverLibraries are the user-space driver libraries a CUDA, NVML or OpenCL
// program needs (NVIDIA's "compute" and "utility" capabilities). Each is
// matched as "<name>.so.*".
var driverLibraries = []string{
	"libcuda",
	"libcudadebugger",
	"libnvidia-allocator",
	"libnvidia-cfg",
	"libnvidia-gpucomp",
	"libnvidia-ml",
	"libnvidia-nvvm",
	"libnvidia-opencl",
	"libnvidia-pkcs11",
	"libnvidia-pkcs11-openssl3",
	"libnvidia-ptxjitcompiler",
}

// driverTools are the driver's command-line tools, mounted at /usr/bin/<name>.
var driverTools = []string{
	"nvidia-cuda-mps-control",
	"nvidia-cuda-mps-server",
	"nvidia-debugdump",
	"nvidia-persistenced",
	"nvidia-smi",
}

// mountOptions make every driver file read-only and inert as a device or
// set-uid source: a container can use the driver but not alter it.
var mountOptions = []string{"ro", "nosuid", "nodev", "bind"}

// DriverFiles are the driver's user-space files found under a driver root,
// and where a container receives them.
type DriverFiles struct {
	// Root is the driver root as the container runtime sees it: every
	// mount's hostPath is Root joined with a file's Source. FindDriverFiles
	// sets it to the root it searched; when this process sees the host's
	// driver root elsewhere than the runtime does (a DaemonSet that mounts
	// the host's / at /host), set it to the runtime's view before building
	// the spec.
	Root      string
	Libraries []DriverFile
	Tools     []DriverFile
}

// A DriverFile is one real file of the driver (symlinks resolved) and the
// paths at which a container sees it.
type DriverFile struct {
	// Source is the file's path relative to the driver root, e.g.
	// "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15".
	Source string
	// Paths are the container paths the file is bind-mounted at, sorted:
	// for a library its own path and its soname (libcuda.so.1) in its own
	// directory and in the standard library directories of both distribution
	// families; for a tool /usr/bin/<name>.
	Paths []string
}

// Empty reports whether no driver file was found.
func (d DriverFiles) Empty() bool { return len(d.Libraries) == 0 && len(d.Tools) == 0 }

// Mounts returns the read-only bind mounts that give a container the driver
// files, sorted by container path.
func (d DriverFiles) Mounts() []*specs.Mount {
	var mounts []*specs.Mount
	for _, group := range [][]DriverFile{d.Libraries, d.Tools} {
		for _, f := range group {
			host := filepath.Join(cmp.Or(d.Root, "/"), f.Source)
			for _, p := range f.Paths {
				mounts = append(mounts, &specs.Mount{
					HostPath:      host,
					ContainerPath: p,
					Options:       slices.Clone(mountOptions),
				})
			}
		}
	}
	slices.SortFunc(mounts, func(a, b *specs.Mount) int { return strings.Compare(a.ContainerPath, b.ContainerPath) })
	return mounts
}

// FindDriverFiles searches driverRoot for the driver's user-space libraries
// (in gpu.DriverLibraryDirs, the directories NVML is loaded from too) and
// tools (in gpu.DriverToolDirs). Symlinks are resolved inside driverRoot
// (gpu.ResolveInRoot), as the host would resolve them with driverRoot as
// "/"; a directory reached twice through symlinks (merged /usr) is searched
// once. Nothing found is not an error (the simulated mode has no driver):
// the result is empty and a note is logged at default verbosity; a caller
// that knows a real driver is in use (NVML loaded) should treat Empty as the
// misconfiguration it is. Only unexpected I/O errors, such as a directory
// that cannot be read, are returned, wrapping ErrDriverFiles.
func FindDriverFiles(ctx context.Context, driverRoot string) (DriverFiles, error) {
	return findDriverFiles(ctx, driverRoot, runtime.GOARCH)
}

func findDriverFiles(ctx context.Context, root, goarch string) (DriverFiles, error) {
	logger := klog.FromContext(ctx).WithValues("driverRoot", root)
	files := DriverFiles{Root: root}

	libs, err := findLibraries(logger, root, goarch)
	if err != nil {
		return DriverFiles{Root: root}, err
	}
	files.Libraries = libs
	tools, err := findTools(logger, root)
	if err != nil {
		return DriverFiles{Root: root}, err
	}
	files.Tools = tools

	if files.Empty() {
		// Info, not Error: the simulated mode has no driver, and this
		// package cannot know whether NVML loaded. With a real driver it
		// is a misconfiguration the operator must see at default verbosity.
		logger.Info("No NVIDIA driver libraries or tools found under the driver root: containers will get device nodes only; "+
			"check --driver-root", "libraryDirs", gpu.DriverLibraryDirs, "toolDirs", gpu.DriverToolDirs)
	} else {
		logger.V(2).Info("Found driver files", "libraries", len(files.Libraries), "tools", len(files.Tools))
	}
	return files, nil
}

// libraryCandidate is a real library file and the names that point at it.
type libraryCandidate struct {
	source  string   // real file relative to root
	name    string   // library base name, e.g. "libcuda"
	links   []string // symlinks to it in its own directory, e.g. "libcuda.so.1"
	soname  string   // DT_SONAME, "" when unknown
	version []int    // numeric suffix of the file name, for choosing among copies
}

func findLibraries(logger klog.Logger, root, goarch string) ([]DriverFile, error) {
	bySource := map[string]*libraryCandidate{}
	var order []string
	seenDirs := map[string]bool{}
	for _, dir := range gpu.DriverLibraryDirs {
		resolved, err := gpu.ResolveInRoot(root, dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrDriverFiles, dir, err)
		}
		if seenDirs[resolved] {
			continue
		}
		seenDirs[resolved] = true
		entries, err := os.ReadDir(filepath.Join(root, resolved))
		switch {
		case err == nil:
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			continue
		default:
			return nil, fmt.Errorf("%w: %w", ErrDriverFiles, err)
		}
		for _, e := range entries {
			lib := matchLibrary(e.Name())
			if lib == "" {
				continue
			}
			rel := path.Join(resolved, e.Name())
			source, err := gpu.ResolveInRoot(root, rel)
			if err != nil {
				logger.V(2).Info("Skipping unresolvable driver library", "path", rel, "err", err)
				continue
			}
			if fi, err := os.Stat(filepath.Join(root, source)); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			c, ok := bySource[source]
			if !ok {
				c = &libraryCandidate{source: source, name: lib, version: versionOf(path.Base(source))}
				soname, ok := elfSoname(filepath.Join(root, source), goarch)
				if !ok {
					logger.V(4).Info("Skipping driver library for another architecture", "path", source)
					bySource[source] = nil
					continue
				}
				c.soname = soname
				bySource[source] = c
				order = append(order, source)
			}
			if c == nil {
				continue
			}
			if e.Type()&fs.ModeSymlink != 0 && path.Dir(rel) == path.Dir(source) {
				c.links = append(c.links, e.Name())
			}
		}
	}

	// Decide every container path once. The file's own path always belongs
	// to it; a soname goes to the copy the host's own symlink picks, else to
	// the highest version.
	type claim struct {
		c        *libraryCandidate
		byLink   bool
		ownsPath bool
	}
	claims := map[string]claim{}
	better := func(a, b claim) bool { // is a better than b
		if a.ownsPath != b.ownsPath {
			return a.ownsPath
		}
		if a.byLink != b.byLink {
			return a.byLink
		}
		return slices.Compare(a.c.version, b.c.version) > 0
	}
	offer := func(p string, cl claim) {
		if cur, ok := claims[p]; !ok || better(cl, cur) {
			claims[p] = cl
		}
	}
	for _, src := range order {
		c := bySource[src]
		dir := "/" + path.Dir(c.source)
		offer("/"+c.source, claim{c: c, ownsPath: true})
		names := map[string]bool{}
		for _, l := range c.links {
			names[l] = true
		}
		if c.soname != "" {
			names[c.soname] = true
		}
		delete(names, path.Base(c.source))
		for n := range names {
			byLink := slices.Contains(c.links, n)
			for _, d := range sonameDirs(dir, goarch) {
				offer(path.Join(d, n), claim{c: c, byLink: byLink})
			}
		}
	}
	paths := map[string][]string{}
	for p, cl := range claims {
		paths[cl.c.source] = append(paths[cl.c.source], p)
	}
	var out []DriverFile
	for _, src := range order {
		ps := paths[src]
		slices.Sort(ps)
		out = append(out, DriverFile{Source: src, Paths: ps})
	}
	slices.SortFunc(out, func(a, b DriverFile) int { return strings.Compare(a.Source, b.Source) })
	return out, nil
}

// sonameDirs are the container directories that get a library's soname: its
// own directory, and the system search directories that glibc's dynamic
// loader searches without an ld.so.cache entry on Debian-family images
// (/usr/lib/<triplet>) and on RHEL-family images (/usr/lib64). That way a
// plain image of either family finds libcuda.so.1 without an ldconfig hook,
// whatever family the host is.
func sonameDirs(dir, goarch string) []string {
	dirs := []string{dir, "/usr/lib64"}
	if t := triplet(goarch); t != "" {
		dirs = append(dirs, "/usr/lib/"+t)
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

func triplet(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64-linux-gnu"
	case "arm64":
		return "aarch64-linux-gnu"
	}
	return ""
}

// matchLibrary returns the driver library a file name belongs to, or "".
func matchLibrary(name string) string {
	for _, lib := range driverLibraries {
		if strings.HasPrefix(name, lib+".so.") {
			return lib
		}
	}
	return ""
}

// versionOf returns the numeric suffix of "libx.so.550.54.15" as [550 54 15].
func versionOf(name string) []int {
	_, suffix, ok := strings.Cut(name, ".so.")
	if !ok {
		return nil
	}
	var v []int
	for _, f := range strings.Split(suffix, ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

// elfSoname reads a library's DT_SONAME. ok is false only for an ELF file
// built for another machine (the 32-bit copies RHEL keeps in /usr/lib); a file
// that is not ELF at all is accepted with no soname.
func elfSoname(file, goarch string) (soname string, ok bool) {
	f, err := elf.Open(file)
	if err != nil {
		return "", true
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]
	if want != elf.EM_NONE && f.Machine != want {
		return "", false
	}
	names, err := f.DynString(elf.DT_SONAME)
	if err != nil || len(names) == 0 {
		return "", true
	}
	return names[0], true
}

func findTools(logger klog.Logger, root string) ([]DriverFile, error) {
	var out []DriverFile
	for _, name := range driverTools {
		for _, dir := range gpu.DriverToolDirs {
			rel := path.Join(dir, name)
			source, err := gpu.ResolveInRoot(root, rel)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				logger.V(2).Info("Skipping unresolvable driver tool", "path", rel, "err", err)
				continue
			}
			fi, err := os.Stat(filepath.Join(root, source))
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			out = append(out, DriverFile{Source: source, Paths: []string{"/usr/bin/" + name}})
			break
		}
	}
	return out, nil
}

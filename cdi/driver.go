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
	// Skipped explains each file with a driver file's name that is not
	// mounted, and why: it resolves outside the driver's directories, is
	// not a regular file, not an ELF shared object (libraries) or not
	// executable (tools), or its symlink dangles or loops. Each wraps
	// ErrDriverFileSkipped and names the file as found and as resolved.
	Skipped []error
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
// once.
//
// Every file mounted is checked, because each lands in every container
// with one of our devices: a library must resolve to a regular ELF shared
// object (ET_DYN) directly inside one of the driver root's library
// directories (gpu.ResolveDirs), a tool to a regular executable file
// directly inside one of its tool directories, and every container path is
// inside those directories too. Anything else (libcuda.so.1 ->
// /etc/ld.so.preload, a directory or FIFO with a library's name, a tool
// without an exec bit) is left out, logged at default verbosity and listed
// in DriverFiles.Skipped.
//
// Nothing found is not an error (the simulated mode has no driver): the
// result is empty and a note is logged at default verbosity; a caller that
// knows a real driver is in use (NVML loaded) should treat Empty as the
// misconfiguration it is. Only unexpected I/O errors, such as a directory
// that cannot be read, are returned, wrapping ErrDriverFiles.
func FindDriverFiles(ctx context.Context, driverRoot string) (DriverFiles, error) {
	return findDriverFiles(ctx, driverRoot, runtime.GOARCH)
}

func findDriverFiles(ctx context.Context, root, goarch string) (DriverFiles, error) {
	logger := klog.FromContext(ctx).WithValues("driverRoot", root)
	files := DriverFiles{Root: root}
	skip := func(err error) {
		err = fmt.Errorf("%w: %w", ErrDriverFileSkipped, err)
		logger.Info("Not mounting a driver file into containers", "reason", err)
		files.Skipped = append(files.Skipped, err)
	}

	libs, err := findLibraries(logger, root, goarch, skip)
	if err != nil {
		return DriverFiles{Root: root}, err
	}
	files.Libraries = libs
	tools, err := findTools(root, skip)
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
		logger.V(2).Info("Found driver files", "libraries", len(files.Libraries), "tools", len(files.Tools), "skipped", len(files.Skipped))
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

func findLibraries(logger klog.Logger, root, goarch string, skip func(error)) ([]DriverFile, error) {
	dirs, err := gpu.ResolveDirs(root, gpu.DriverLibraryDirs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDriverFiles, err)
	}
	// Container paths may be in the directories as the host names them
	// (the soname directories are among them) or as they resolve.
	containerDirs := slices.Concat(gpu.DriverLibraryDirs, dirs)
	bySource := map[string]*libraryCandidate{}
	rejected := map[string]bool{} // sources already explained in Skipped
	var order []string
	for _, resolved := range dirs {
		entries, err := os.ReadDir(filepath.Join(root, resolved))
		switch {
		case err == nil:
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			continue
		default:
			return nil, fmt.Errorf("%w: %w", ErrDriverFiles, err)
		}
		for _, e := range entries {
			if matchLibrary(e.Name()) == "" {
				continue
			}
			rel := path.Join(resolved, e.Name())
			source, err := gpu.ResolveInRoot(root, rel)
			if err != nil {
				skip(fmt.Errorf("library %s: cannot resolve inside the driver root: %w", rel, err))
				continue
			}
			if c, seen := bySource[source]; seen {
				if c != nil && e.Type()&fs.ModeSymlink != 0 && path.Dir(rel) == path.Dir(source) {
					c.links = append(c.links, e.Name())
				}
				continue
			}
			if rejected[source] {
				continue
			}
			// Not cached as rejected: every link that leads astray is named.
			if !slices.Contains(dirs, path.Dir(source)) {
				skip(fmt.Errorf("library %s resolves to /%s, outside the driver's library directories", rel, source))
				continue
			}
			// The real file is mounted at its own path too: libcuda.so.1 ->
			// libc.so.6 would put the host's libc over the image's.
			lib := matchLibrary(path.Base(source))
			if lib == "" {
				skip(fmt.Errorf("library %s resolves to /%s, which is not a driver library", rel, source))
				continue
			}
			soname, otherArch, err := inspectLibrary(filepath.Join(root, filepath.FromSlash(source)), goarch)
			if err != nil {
				rejected[source] = true
				skip(fmt.Errorf("library %s (/%s): %w", rel, source, err))
				continue
			}
			if otherArch {
				// A 32-bit copy, as RHEL keeps in /usr/lib: a real library,
				// only not for this machine.
				logger.V(4).Info("Skipping driver library for another architecture", "path", source)
				bySource[source] = nil
				continue
			}
			c := &libraryCandidate{source: source, name: lib, version: versionOf(path.Base(source))}
			if soname != "" && (matchLibrary(soname) != lib || strings.Contains(soname, "/")) {
				skip(fmt.Errorf("library %s (/%s): soname %q is not a %s.so.* file name: mounted under its own names only", rel, source, soname, lib))
				soname = ""
			}
			c.soname = soname
			bySource[source] = c
			order = append(order, source)
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
		// Guaranteed by the checks above; kept as the last line of
		// defence, because a mount at any other path could shadow one of
		// the image's own files.
		if !slices.Contains(containerDirs, path.Dir(p)[1:]) || matchLibrary(path.Base(p)) != cl.c.name {
			skip(fmt.Errorf("library /%s: container path %s is outside the library directories", cl.c.source, p))
			continue
		}
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

// inspectLibrary checks that file is a regular file and an ELF shared
// object (ET_DYN) and reads its DT_SONAME ("" when it has none). otherArch
// reports an ELF file built for another machine (the 32-bit copies RHEL
// keeps in /usr/lib). Only the ELF header and the dynamic section are read.
// The file is opened without following a symlink or blocking on a FIFO, so
// a file swapped since it was resolved is refused rather than trusted.
func inspectLibrary(file, goarch string) (soname string, otherArch bool, err error) {
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", false, err
	}
	if !fi.Mode().IsRegular() {
		return "", false, fmt.Errorf("not a regular file (%s)", fileType(fi.Mode()))
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return "", false, fmt.Errorf("not an ELF shared object: %w", err)
	}
	if ef.Type != elf.ET_DYN {
		return "", false, fmt.Errorf("not an ELF shared object: type %s", ef.Type)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]
	if want != elf.EM_NONE && ef.Machine != want {
		return "", true, nil
	}
	names, err := ef.DynString(elf.DT_SONAME)
	if err != nil || len(names) == 0 {
		return "", false, nil
	}
	return names[0], false, nil
}

// fileType names the type of a file that is not regular, for messages.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return m.Type().String()
}

// findTools finds each tool in the first tool directory that has it. A
// tool that is missing there is looked for in the next directory; one that
// is present but unusable is skipped with its reason, and the next
// directory is tried too.
func findTools(root string, skip func(error)) ([]DriverFile, error) {
	dirs, err := gpu.ResolveDirs(root, gpu.DriverToolDirs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDriverFiles, err)
	}
	var out []DriverFile
	for _, name := range driverTools {
		for _, dir := range dirs {
			rel := path.Join(dir, name)
			if _, err := os.Lstat(filepath.Join(root, filepath.FromSlash(rel))); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			source, err := gpu.ResolveInRoot(root, rel)
			if err != nil {
				skip(fmt.Errorf("tool %s: cannot resolve inside the driver root: %w", rel, err))
				continue
			}
			if !slices.Contains(dirs, path.Dir(source)) {
				skip(fmt.Errorf("tool %s resolves to /%s, outside the driver's tool directories", rel, source))
				continue
			}
			fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(source)))
			switch {
			case err != nil:
				skip(fmt.Errorf("tool %s (/%s): %w", rel, source, err))
				continue
			case !fi.Mode().IsRegular():
				skip(fmt.Errorf("tool %s (/%s): not a regular file (%s)", rel, source, fileType(fi.Mode())))
				continue
			case fi.Mode().Perm()&0o111 == 0:
				skip(fmt.Errorf("tool %s (/%s): not executable (mode %s)", rel, source, fi.Mode().Perm()))
				continue
			}
			// /usr/bin is the first tool directory: the container path is
			// always inside them.
			out = append(out, DriverFile{Source: source, Paths: []string{"/usr/bin/" + name}})
			break
		}
	}
	return out, nil
}

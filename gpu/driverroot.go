package gpu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// DriverLibraryDirs are the directories, relative to a driver root, where the
// NVIDIA driver's user-space libraries live, in search order: multiarch
// directories (Debian, Ubuntu), lib64 (RHEL, SUSE), plain lib (distributions
// with neither), Debian's alternatives directories (nvidia/current, which
// the multiarch directories only link into), and the layout GKE and other
// driver installers use (/usr/local/nvidia). NVML loading (NewNVMLBackend)
// and the CDI driver mounts (cdi.FindDriverFiles) both search exactly this
// list, so a driver whose NVML loads is also one whose libcuda a container
// receives.
var DriverLibraryDirs = []string{
	"usr/lib/x86_64-linux-gnu",
	"lib/x86_64-linux-gnu",
	"usr/lib/aarch64-linux-gnu",
	"lib/aarch64-linux-gnu",
	"usr/lib64",
	"lib64",
	"usr/lib",
	"lib",
	"usr/lib/x86_64-linux-gnu/nvidia/current",
	"usr/lib/aarch64-linux-gnu/nvidia/current",
	"usr/local/nvidia/lib64",
	"usr/local/nvidia/lib",
}

// DriverToolDirs are the directories, relative to a driver root, where the
// driver's command-line tools (nvidia-smi, …) live, in search order. The
// last is where Debian's packages keep the real files that alternatives
// links in /usr/bin point at.
var DriverToolDirs = []string{"usr/bin", "bin", "usr/local/nvidia/bin", "usr/lib/nvidia/current"}

// ErrTooManyLinks stops symlink loops while resolving inside a root, like
// ELOOP.
var ErrTooManyLinks = errors.New("too many levels of symbolic links")

// maxLinks bounds the symlinks followed by one ResolveInRoot call, as the
// kernel's own limit does.
const maxLinks = 40

// ResolveInRoot resolves rel, a slash-separated path below root, following
// every symlink in every component as if root were "/": an absolute target
// restarts at root and ".." never climbs above it. It returns the resolved
// path relative to root (slash-separated, "" for root itself). Errors are
// those of os.Lstat and os.Readlink (so a missing component wraps
// fs.ErrNotExist), or ErrTooManyLinks.
//
// filepath.EvalSymlinks, or following only the last component, would let an
// absolute link anywhere in the path, such as a driver root's /lib ->
// /usr/lib, lead out of a root like /host into this container's own files.
func ResolveInRoot(root, rel string) (string, error) {
	var done []string
	todo := strings.Split(filepath.ToSlash(rel), "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		next := path.Join(append(slices.Clone(done), c)...)
		full := filepath.Join(root, filepath.FromSlash(next))
		fi, err := os.Lstat(full)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: %w", rel, ErrTooManyLinks)
		}
		target, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			done = done[:0]
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return path.Join(done...), nil
}

// ResolveDirs returns those of dirs (slash-separated, below root) that are
// directories under root, each resolved inside root (ResolveInRoot), in
// order and without duplicates: on a merged-/usr host lib/x86_64-linux-gnu
// and usr/lib/x86_64-linux-gnu are one directory. A dir that does not
// exist, is not a directory or resolves to root itself is left out; other
// errors (a symlink loop, a directory that cannot be read) are returned.
//
// These are the driver root's real library or tool directories: a driver
// file is only used when it resolves to an entry directly inside one of
// them, so that a link such as libcuda.so.1 -> /etc/passwd cannot bring
// another file of the host into a container.
func ResolveDirs(root string, dirs []string) ([]string, error) {
	var out []string
	for _, dir := range dirs {
		resolved, err := ResolveInRoot(root, dir)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(resolved)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		// A directory that resolves to the root itself holds no driver.
		if fi.IsDir() && resolved != "" && !slices.Contains(out, resolved) {
			out = append(out, resolved)
		}
	}
	return out, nil
}

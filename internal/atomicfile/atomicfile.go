// Package atomicfile replaces files so that a reader sees the old content or
// the new, never a part of either, and a crash (kill -9, power loss) leaves
// one of the two at the final name.
//
// Write puts the data in a temporary file in the target's directory, gives
// it its final mode before the first byte is written (os.CreateTemp makes
// 0600 and the umask must not matter either), syncs it, renames it over the
// target and syncs the directory. On any error the temporary file is
// removed. Temporary files carry TempPrefix, so a process that was killed
// mid-write can find and delete its own leftovers at start (RemoveTemps)
// without touching anybody else's files in a shared directory such as
// /var/run/cdi. Their names never end in ".yaml" or ".json", so a CDI
// runtime watching the directory never parses one.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// TempPrefix starts the name of every temporary file Write creates:
// TempPrefix + <target base name> + "." + <random digits>.
const TempPrefix = ".gpublocks-tmp."

// Write atomically replaces path with data, mode perm (exactly, whatever the
// umask). The directory must exist. The returned error names path and wraps
// the underlying one (errors.Is(err, syscall.ENOSPC) on a full filesystem).
func Write(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, writeAll)
}

func writeAll(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return err
}

// write is Write with the data-writing step injectable, so that tests can
// fail it half-way as a full filesystem does.
func write(path string, data []byte, perm fs.FileMode, writeData func(*os.File, []byte) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, TempPrefix+base+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	renamed := false
	defer func() {
		if err == nil {
			return
		}
		_ = tmp.Close() // a second Close only reports os.ErrClosed
		if !renamed {
			_ = os.Remove(tmp.Name())
		}
		err = fmt.Errorf("write %s: %w", path, err)
	}()
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := writeData(tmp, data); err != nil {
		return err
	}
	// Sync before rename: otherwise a crash can leave the new name pointing
	// at an empty file on filesystems that reorder metadata and data.
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	renamed = true
	return syncDir(dir)
}

// syncDir makes a rename in dir durable. Filesystems that cannot sync a
// directory say EINVAL; there the rename is as durable as it gets.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// RemoveTemps deletes the temporary files that Write left in dir when its
// process died mid-write, for the targets whose base name matches pattern
// (filepath.Match syntax, e.g. "gpublocks.io-claim_*.yaml"). Call it at
// start, before this process writes there: a temporary file of a write in
// progress would be removed too. It returns the paths removed; a missing
// dir is no error.
func RemoveTemps(dir, pattern string) ([]string, error) {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("remove temporary files in %s: pattern %q: %w", dir, pattern, err)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remove temporary files: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		target, ok := tempTarget(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if ok, _ := filepath.Match(pattern, target); !ok {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("remove temporary files: %w", err)
	}
	return removed, nil
}

// tempTarget returns the target base name of a temporary file's name, and
// whether name is one of ours at all.
func tempTarget(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, TempPrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || i == len(rest)-1 {
		return "", false
	}
	for _, c := range rest[i+1:] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	return rest[:i], true
}

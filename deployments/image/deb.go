package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrBadPackage means a .deb file could not be read as a Debian package.
var ErrBadPackage = errors.New("not a readable Debian package")

// A File is one entry of the image's file system.
type File struct {
	Path     string // absolute, cleaned: /lib/x86_64-linux-gnu/libc.so.6
	Type     byte   // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	Mode     int64  // permission bits
	Linkname string // symlink target, as stored
	Data     []byte // regular files only
	Source   string // the package (or input) it came from, for messages
}

// readDeb returns the files of a Debian package's data archive. Hard links
// are turned into copies so that every entry stands on its own.
func readDeb(name string, r io.Reader) ([]File, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, 8)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != "!<arch>\n" {
		return nil, fmt.Errorf("%s: %w: no ar header", name, ErrBadPackage)
	}
	for {
		hdr := make([]byte, 60)
		if _, err := io.ReadFull(br, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%s: %w: no data.tar member", name, ErrBadPackage)
			}
			return nil, fmt.Errorf("%s: %w: %v", name, ErrBadPackage, err)
		}
		member := strings.TrimRight(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("%s: %w: bad size of member %q", name, ErrBadPackage, member)
		}
		body := io.LimitReader(br, size)
		if strings.HasPrefix(member, "data.tar") {
			files, err := readDataTar(name, member, body)
			if err != nil {
				return nil, err
			}
			return files, nil
		}
		// ar pads members to an even size.
		if _, err := io.Copy(io.Discard, io.LimitReader(br, size+size%2)); err != nil {
			return nil, fmt.Errorf("%s: %w: %v", name, ErrBadPackage, err)
		}
	}
}

func readDataTar(pkg, member string, r io.Reader) ([]File, error) {
	var dr io.Reader
	switch path.Ext(member) {
	case ".xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", pkg, member, err)
		}
		dr = x
	case ".zst":
		z, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", pkg, member, err)
		}
		defer z.Close()
		dr = z
	case ".gz":
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", pkg, member, err)
		}
		dr = g
	case ".tar":
		dr = r
	default:
		return nil, fmt.Errorf("%s: %w: unsupported compression of %s", pkg, ErrBadPackage, member)
	}
	tr := tar.NewReader(dr)
	var files []File
	byPath := map[string]int{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", pkg, member, err)
		}
		p := path.Clean("/" + h.Name)
		if p == "/" {
			continue // the archive's "./": the image root is implied
		}
		f := File{Path: p, Mode: h.Mode & 0o7777, Source: pkg}
		switch h.Typeflag {
		case tar.TypeDir:
			f.Type = tar.TypeDir
		case tar.TypeSymlink:
			f.Type, f.Linkname = tar.TypeSymlink, h.Linkname
		case tar.TypeReg:
			f.Type = tar.TypeReg
			var buf bytes.Buffer
			if _, err := io.Copy(&buf, tr); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", pkg, p, err)
			}
			f.Data = buf.Bytes()
		case tar.TypeLink:
			i, ok := byPath[path.Clean("/"+h.Linkname)]
			if !ok {
				return nil, fmt.Errorf("%s: %w: hard link %s to unknown %s", pkg, ErrBadPackage, p, h.Linkname)
			}
			f.Type, f.Data = tar.TypeReg, files[i].Data
		default:
			// Device nodes and FIFOs have no place in a runtime image.
			continue
		}
		byPath[p] = len(files)
		files = append(files, f)
	}
}

// ReadDebFile reads the data files of the package at path.
func ReadDebFile(name string) ([]File, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return readDeb(path.Base(name), f)
}

package draplugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"k8s.io/apimachinery/pkg/types"

	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// CheckpointFile is the checkpoint's name in the plugin's data directory
// (<kubelet-plugins-dir>/<driver name>).
const CheckpointFile = "checkpoint.json"

// checkpointVersion is the format written; a file of another version is
// refused rather than guessed at.
const checkpointVersion = 1

// checkpointFile is the checkpoint on disk. Checksum is "sha256:" and the
// hex digest of Claims in compact JSON: a file cut short or edited by hand
// is detected instead of silently forgetting prepared claims, which would
// let their devices be prepared twice.
type checkpointFile struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Claims   json.RawMessage `json:"claims"`
}

// preparedClaim is what the driver remembers of a prepared claim: enough
// to answer a repeated prepare, rebuild its CDI spec, unprepare it, and
// count its devices against every later claim.
type preparedClaim struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Devices   []preparedDevice `json:"devices"`
	// Pending marks a claim whose MIG instances are being created: it is
	// checkpointed so before the first Create, and its placements are
	// held from then on. A driver killed before prepare finished finds
	// it so at start; the kubelet's retry then finishes it, counting an
	// idle instance at a pending device's placement as created by this
	// driver (a MIG device without UUID has not been handed out yet).
	// A pending claim was never reported prepared.
	Pending bool `json:"pending,omitempty"`
}

// preparedDevice is one allocated device of a prepared claim.
type preparedDevice struct {
	Request  string `json:"request"` // as in the allocation result (may be "request/subrequest")
	Pool     string `json:"pool"`
	Device   string `json:"device"`
	Type     string `json:"type"`    // dra.TypeGPU, TypeBlocks, TypeMIG
	GPUUUID  string `json:"gpuUUID"` // the physical GPU (the parent of a MIG device)
	GPUIndex int    `json:"gpuIndex"`
	UUID     string `json:"uuid"` // the CDI device: the GPU's UUID, or the MIG device's
	// Blocks is the blocks share (type blocks only); MemoryMiB the GPU's
	// memory (types gpu and blocks), which the blocks environment uses.
	Blocks    int    `json:"blocks,omitempty"`
	MemoryMiB uint64 `json:"memoryMiB,omitempty"`
	ShareID   string `json:"shareID,omitempty"`
	// AdminAccess devices are prepared for monitoring alongside their
	// users: they take nothing and conflict with nothing.
	AdminAccess bool `json:"adminAccess,omitempty"`
	// Profile and Placement are a MIG device's, as published (Placement
	// nil when NVML did not report it): they keep overlapping placements
	// apart, and name what to create.
	Profile   string     `json:"profile,omitempty"`
	Placement *placement `json:"placement,omitempty"`
	// Created says this driver created the MIG instance for the claim, so
	// unprepare destroys it. An instance that existed before the claim is
	// never destroyed. The claim is checkpointed with it before prepare
	// reports success, so a restarted driver still destroys it.
	Created bool `json:"created,omitempty"`
}

// placement is a MIG device's place in its GPU's memory slices.
type placement struct {
	Start int `json:"start"`
	Size  int `json:"size"`
}

// overlaps tells whether two placements share a memory slice.
func (p placement) overlaps(o placement) bool {
	return p.Start < o.Start+o.Size && o.Start < p.Start+p.Size
}

// loadCheckpoint reads the prepared claims. A missing file holds none; an
// unreadable, corrupt or unknown-version file is an error wrapping
// ErrCheckpoint that says what to do.
func loadCheckpoint(path string) (map[types.UID]*preparedClaim, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[types.UID]*preparedClaim{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrCheckpoint, path, err)
	}
	corrupt := func(what string, err error) error {
		return fmt.Errorf("%w: %s is corrupt (%s): the claims it records as prepared are unknown, "+
			"and starting without them could hand their devices out twice; restore the file, or stop "+
			"every pod on this node that uses a %s claim and delete the file: %w",
			ErrCheckpoint, path, what, dra.DriverName, err)
	}
	var f checkpointFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, corrupt("not valid JSON", err)
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("%w: %s has version %d, this gpublocks reads version %d: "+
			"run the gpublocks version that wrote it, or stop every pod on this node that uses a %s claim and delete the file",
			ErrCheckpoint, path, f.Version, checkpointVersion, dra.DriverName)
	}
	if sum := checksum(f.Claims); sum != f.Checksum {
		return nil, corrupt("checksum mismatch", fmt.Errorf("recorded %q, content has %q", f.Checksum, sum))
	}
	claims := map[types.UID]*preparedClaim{}
	if err := json.Unmarshal(f.Claims, &claims); err != nil {
		return nil, corrupt("claims unreadable", err)
	}
	for uid, c := range claims {
		if c == nil || len(c.Devices) == 0 {
			return nil, corrupt("claim without devices", fmt.Errorf("claim %s", uid))
		}
		for _, d := range c.Devices {
			switch d.Type {
			case dra.TypeGPU, dra.TypeMIG:
			case dra.TypeBlocks:
				if d.Blocks < 1 || d.Blocks > dra.BlocksPerGPU {
					return nil, corrupt("blocks out of range", fmt.Errorf("claim %s, device %s: %d blocks", uid, d.Device, d.Blocks))
				}
			default:
				return nil, corrupt("unknown device type", fmt.Errorf("claim %s, device %s: type %q", uid, d.Device, d.Type))
			}
			toCreate := c.Pending && d.Type == dra.TypeMIG && d.Profile != "" && d.Placement != nil
			if d.GPUUUID == "" || (d.UUID == "" && !toCreate) {
				return nil, corrupt("device without uuid", fmt.Errorf("claim %s, device %s", uid, d.Device))
			}
		}
	}
	return claims, nil
}

// saveCheckpoint writes the prepared claims atomically: after kill -9 the
// file holds the old set or the new one, never a mix.
func saveCheckpoint(path string, claims map[types.UID]*preparedClaim) error {
	raw, err := json.Marshal(claims) // map keys sorted: equal sets, equal bytes
	if err != nil {
		return fmt.Errorf("%w: encode: %w", ErrCheckpoint, err)
	}
	data, err := json.Marshal(checkpointFile{Version: checkpointVersion, Checksum: checksum(raw), Claims: raw})
	if err != nil {
		return fmt.Errorf("%w: encode: %w", ErrCheckpoint, err)
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	return nil
}

// checksum digests JSON independently of its layout (a checkpoint that
// someone pretty-printed is still the same checkpoint).
func checksum(raw []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		buf.Reset()
		buf.Write(raw)
	}
	sum := sha256.Sum256(buf.Bytes())
	return "sha256:" + hex.EncodeToString(sum[:])
}

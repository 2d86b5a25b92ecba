package sim

import (
	"crypto/sha256"
	"fmt"
)

// stableUUID derives a UUID-shaped identifier from parts, so the same spec
// yields the same IDs on every start: the kubelet checkpoints device IDs, and
// a restarted plugin must offer the ones it offered before.
func stableUUID(prefix string, parts ...any) string {
	h := sha256.Sum256([]byte(fmt.Sprint(parts...)))
	// Shape it as an RFC 4122 version 5 (name-based, SHA) UUID.
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%s-%x-%x-%x-%x-%x", prefix, h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// gpuUUID is the UUID of the GPU at index whose spec gives it seed.
func gpuUUID(seed string, index int) string {
	return stableUUID("GPU", seed, "/gpu/", index)
}

// migUUID is the UUID of a MIG device. It includes the profiles, so a MIG
// device re-created with another shape at the same IDs is a new device, and
// gen, the number of compute instances created at those IDs before it in
// this simulation, so one re-created with the same shape is new too (as on
// hardware). The first keeps the UUID it has always had, so a simulation
// starts with the same MIG UUIDs every time.
func migUUID(seed string, index int, gi, ci, giProfile, ciProfile uint32, gen int) string {
	if gen == 0 {
		return stableUUID("MIG", seed, "/gpu/", index, "/gi/", gi, "/ci/", ci, "/profile/", giProfile, "/", ciProfile)
	}
	return stableUUID("MIG", seed, "/gpu/", index, "/gi/", gi, "/ci/", ci, "/profile/", giProfile, "/", ciProfile, "/gen/", gen)
}

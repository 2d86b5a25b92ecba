package blocks

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gpublocks/gpublocks/plugin"
)

const (
	// PerGPU is the number of blocks one GPU is cut into; a block is 1 % of it.
	PerGPU = 100
	// Separator joins a GPU UUID and a block number in a block ID.
	Separator = "::"
)

// ErrInvalidID is wrapped by every error about a malformed block ID.
var ErrInvalidID = errors.New("invalid block id")

// FormatID returns the device ID of block n of the GPU with the given UUID,
// "<uuid>::<n>". It does not validate its arguments; ParseID does.
func FormatID(uuid string, n int) string {
	return uuid + Separator + strconv.Itoa(n)
}

// ParseID splits a block ID into its GPU UUID and block number. It is strict,
// so that every ID has exactly one spelling: the UUID must be non-empty and
// free of colons, spaces and control characters, and the number must be
// 0…99 in plain decimal (no sign, no leading zeros). Errors quote the ID
// through plugin.QuoteID: IDs come from requests and can be of any length.
func ParseID(id string) (uuid string, n int, err error) {
	i := strings.Index(id, Separator)
	if i < 0 {
		return "", 0, fmt.Errorf("%w %s: want <GPU-UUID>%s<n>", ErrInvalidID, plugin.QuoteID(id), Separator)
	}
	uuid, num := id[:i], id[i+len(Separator):]
	if err := checkUUID(uuid); err != nil {
		return "", 0, fmt.Errorf("%w %s: %w", ErrInvalidID, plugin.QuoteID(id), err)
	}
	n, ok := parseBlockNumber(num)
	if !ok {
		return "", 0, fmt.Errorf("%w %s: block number %s is not an integer 0-%d without sign or leading zeros",
			ErrInvalidID, plugin.QuoteID(id), plugin.QuoteID(num), PerGPU-1)
	}
	return uuid, n, nil
}

// checkUUID rejects GPU UUIDs that could not round-trip through a block ID.
func checkUUID(uuid string) error {
	if uuid == "" {
		return errors.New("empty GPU UUID")
	}
	for i := 0; i < len(uuid); i++ {
		if c := uuid[i]; c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("GPU UUID %s contains %q", plugin.QuoteID(uuid), c)
		}
	}
	return nil
}

// parseBlockNumber accepts exactly the spellings strconv.Itoa produces for
// 0…PerGPU-1.
func parseBlockNumber(s string) (int, bool) {
	if len(s) == 0 || len(s) > 2 || (len(s) == 2 && s[0] == '0') {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n < PerGPU
}

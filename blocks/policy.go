package blocks

import (
	"errors"
	"fmt"

	"github.com/gpublocks/gpublocks/config"
)

// Policy decides which GPU Prefer takes a request of at most 100 blocks from.
type Policy int

const (
	// Binpack (the default) takes the GPU with the fewest free blocks that
	// still fits the request, keeping other GPUs free for large requests.
	Binpack Policy = iota
	// Spread takes the GPU with the most free blocks, so that containers
	// share a GPU with as few others as possible.
	Spread
)

// ErrUnknownPolicy is returned for a policy name other than "binpack" or
// "spread".
var ErrUnknownPolicy = errors.New("unknown blocks policy")

// ParsePolicy parses the config spelling of a policy: "binpack" or "spread".
// The empty string means the default, Binpack.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case config.PolicyBinpack, "":
		return Binpack, nil
	case config.PolicySpread:
		return Spread, nil
	}
	return Binpack, fmt.Errorf("%w %q: want binpack or spread", ErrUnknownPolicy, s)
}

// String returns the config spelling of the policy.
func (p Policy) String() string {
	switch p {
	case Binpack:
		return config.PolicyBinpack
	case Spread:
		return config.PolicySpread
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// MarshalText implements encoding.TextMarshaler with the config spelling.
func (p Policy) MarshalText() ([]byte, error) {
	if p != Binpack && p != Spread {
		return nil, fmt.Errorf("%w %d", ErrUnknownPolicy, int(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParsePolicy.
func (p *Policy) UnmarshalText(text []byte) error {
	v, err := ParsePolicy(string(text))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

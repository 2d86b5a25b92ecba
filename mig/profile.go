package mig

import (
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
)

// profileParser validates profile strings; go-nvlib's format check needs no
// NVML calls.
var profileParser = device.New(nil, device.WithVerifySymbols(false))

// ResourceSuffix is the resource name (without domain) of a MIG profile under
// strategy mixed, as NVIDIA names it: "1g.10gb" → "mig-1g.10gb",
// "1g.10gb+me" → "mig-1g.10gb.me".
func ResourceSuffix(profile string) (string, error) {
	if err := profileParser.AssertValidMigProfileFormat(profile); err != nil {
		return "", fmt.Errorf("mig profile %q: %w", profile, err)
	}
	return "mig-" + strings.ReplaceAll(profile, "+", "."), nil
}

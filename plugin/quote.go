package plugin

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxQuotedID is how many bytes of one device ID an error message echoes.
// IDs come from the kubelet's requests and can be of any length (up to the
// gRPC message limit): a message naming ten 3 MiB IDs would put 30 MB into
// the reply and as much again into the log.
const MaxQuotedID = 64

// maxNamedIDs bounds how many offending IDs an error message lists, so that a
// broken request for 800 blocks does not produce an 800-ID log line.
const maxNamedIDs = 10

// QuoteID quotes a device ID from a request for an error message: Go-quoted
// (so control characters and invalid UTF-8 show as escapes) and, when longer
// than MaxQuotedID bytes, cut there with an ellipsis and the full length,
// e.g. `"GPU-aaaa"… (3145728 bytes)`.
func QuoteID(id string) string {
	if len(id) <= MaxQuotedID {
		return strconv.Quote(id)
	}
	cut := MaxQuotedID
	// Cut on a character boundary when the ID is valid UTF-8 up to there,
	// so the quoted prefix does not end in a broken character.
	for cut > MaxQuotedID-utf8.UTFMax && !utf8.RuneStart(id[cut]) {
		cut--
	}
	return strconv.Quote(id[:cut]) + "… (" + strconv.Itoa(len(id)) + " bytes)"
}

// QuoteIDs lists IDs for an error message: each through QuoteID, at most
// ten of them, then how many more there are.
func QuoteIDs(ids []string) string {
	var b strings.Builder
	for i, id := range ids {
		if i == maxNamedIDs {
			b.WriteString(" and ")
			b.WriteString(strconv.Itoa(len(ids) - maxNamedIDs))
			b.WriteString(" more")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(QuoteID(id))
	}
	return b.String()
}

package blocks

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// ErrInvalidRequest is wrapped by errors for requests that break the
	// blocks rules whatever is free: a split across GPUs, a count over 100
	// that is not a multiple of 100, unknown or duplicate IDs. Its gRPC code
	// is InvalidArgument.
	ErrInvalidRequest = errors.New("invalid blocks request")
	// ErrNoFit is wrapped by Prefer errors for valid requests that no GPU
	// can take right now although the node may have enough free blocks in
	// total. Its gRPC code is ResourceExhausted.
	ErrNoFit = errors.New("no gpu has enough free blocks")
)

// requestError is both a gRPC status error (status.Code and the gRPC server
// see its code) and a wrapper of one of the sentinels above (errors.Is).
type requestError struct {
	code     codes.Code
	sentinel error
	msg      string
}

func (e *requestError) Error() string              { return e.msg }
func (e *requestError) Unwrap() error              { return e.sentinel }
func (e *requestError) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }

func invalidf(format string, args ...any) error {
	return &requestError{codes.InvalidArgument, ErrInvalidRequest, fmt.Sprintf(format, args...)}
}

func noFitf(format string, args ...any) error {
	return &requestError{codes.ResourceExhausted, ErrNoFit, fmt.Sprintf(format, args...)}
}

// joinCounts renders per-GPU counts as "30 blocks from GPU 0 (GPU-a), 20
// from GPU 1 (GPU-b) and 10 from GPU 2 (GPU-c)".
func joinCounts(r *Resource, slots []int, counts []int) string {
	var b strings.Builder
	for i, s := range slots {
		switch {
		case i == 0:
		case i == len(slots)-1:
			b.WriteString(" and ")
		default:
			b.WriteString(", ")
		}
		unit := ""
		if i == 0 {
			unit = " blocks"
			if counts[s] == 1 {
				unit = " block"
			}
		}
		fmt.Fprintf(&b, "%d%s from %s", counts[s], unit, &r.gpus[s])
	}
	return b.String()
}

package draplugin

import "errors"

// Errors a claim's PrepareResult wraps; callers and tests tell them apart
// with errors.Is.
var (
	// ErrUnknownDevice means a claim names a device this node does not
	// publish (another pool, a device that left the pool, or one that is
	// not published yet after a restart).
	ErrUnknownDevice = errors.New("unknown device")
	// ErrUnhealthy means a claim names a device that carries the unhealthy
	// taint.
	ErrUnhealthy = errors.New("unhealthy device")
	// ErrConflict means preparing a claim would hand a device, or part of
	// a GPU, to two claims at once.
	ErrConflict = errors.New("double assignment")
	// ErrInvalidAllocation means a claim's allocation cannot be served as
	// it stands (a blocks share without a valid consumedCapacity, an
	// allocation that changed under a prepared claim).
	ErrInvalidAllocation = errors.New("invalid allocation")
	// ErrMIG means a MIG instance of a claim could not be created
	// (prepare) or destroyed (unprepare); the error says which and why.
	ErrMIG = errors.New("MIG instance")
	// ErrCheckpoint means the checkpoint of prepared claims cannot be read
	// or written.
	ErrCheckpoint = errors.New("dra checkpoint")
	// ErrInvalidOptions means Start was called with options it cannot use.
	ErrInvalidOptions = errors.New("invalid dra plugin options")
	// ErrInvalidPool means Publish was given a pool it cannot serve.
	ErrInvalidPool = errors.New("invalid dra pool")
)

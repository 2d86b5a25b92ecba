package plugin

import "errors"

// Sentinel errors, one per failure class. Callers test them with errors.Is;
// gRPC handlers turn the device-ID classes into codes.InvalidArgument whose
// message keeps the wrapped text (resource name and the offending IDs).
var (
	// ErrInvalidResource means Manager.Update was handed a resource it cannot
	// serve: nil, an empty or duplicate name, a socket path that does not fit
	// a unix socket address, or a device list with duplicate IDs.
	ErrInvalidResource = errors.New("invalid resource")
	// ErrUnknownDevice means a request named device IDs that the resource's
	// current snapshot does not offer.
	ErrUnknownDevice = errors.New("unknown device IDs")
	// ErrDuplicateDevice means a request named the same device ID twice.
	ErrDuplicateDevice = errors.New("duplicate device IDs")
	// ErrBadRequest means a request is malformed in a way that does not name
	// specific devices: an empty ID list or an impossible size.
	ErrBadRequest = errors.New("malformed request")
	// ErrNoDevices means a request reached a resource that was dropped from
	// the layout: it stays registered (see Manager.Update) but offers no
	// devices now.
	ErrNoDevices = errors.New("offers no devices now")
	// ErrWatcherClosed means Manager.Run's watcher of the plugin directory
	// stopped: without it kubelet restarts go unnoticed, so Run stops.
	ErrWatcherClosed = errors.New("watcher of the plugin directory closed")
	// ErrAlreadyRunning means Manager.Run was called more than once.
	ErrAlreadyRunning = errors.New("manager already running")
)

package cdi

import "errors"

// ErrInvalidKind means a vendor or class is not a valid CDI name.
var ErrInvalidKind = errors.New("invalid cdi kind")

// ErrInvalidSpec means a spec failed validation; nothing was written.
var ErrInvalidSpec = errors.New("invalid cdi spec")

// ErrWriteSpec wraps every failure to write or remove a spec file.
var ErrWriteSpec = errors.New("cannot write cdi spec")

// ErrDeviceOmitted is wrapped by the reason a GPU or MIG device was left out
// of a spec (see Omission).
var ErrDeviceOmitted = errors.New("device left out of cdi spec")

// ErrUnknownStrategy means a deviceListStrategy name is not one we know.
var ErrUnknownStrategy = errors.New("unknown device list strategy")

// ErrDriverFiles wraps unexpected I/O errors while searching the driver root
// (a missing file or directory is never one of them).
var ErrDriverFiles = errors.New("cannot search driver files")

// ErrDriverFileSkipped is wrapped by the reason a file with a driver
// library's or tool's name is not mounted (see DriverFiles.Skipped).
var ErrDriverFileSkipped = errors.New("driver file not mounted")

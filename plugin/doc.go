// Package plugin is gpublocks' kubelet device-plugin framework. It knows the
// kubelet's device-plugin API (v1beta1) and nothing about GPUs: anything that
// implements Resource — a name, a device list, a way to choose devices and a
// way to allocate them — can be served.
//
// # The pieces
//
// A Resource is an immutable snapshot of one kubelet resource name (for
// example "nvidia.com/gpu" or "nvidia.com/mig-1g.10gb"). Nothing in a
// Resource changes after it is built: a new layout, a new config or a device
// turning unhealthy is a new Resource.
//
// A Manager owns one gRPC server per resource name, each on its own unix
// socket in the kubelet's device-plugin directory (named by SocketName), and
// registers each with the kubelet. The caller drives it with two calls:
//
//	m := plugin.NewManager(plugin.Options{PluginDir: "/var/lib/kubelet/device-plugins"})
//	if err := m.Update(resources); err != nil { … } // before Run is fine
//	go m.Run(ctx)                                 // until ctx is cancelled
//	…
//	m.Update(newResources)                        // after every change
//
// Update is the single entry point for change. It compares names with what
// is served: new names get a socket and a registration, known names get the
// new snapshot pushed to their ListAndWatch streams, and names that are no
// longer given stay registered but advertise no devices. That last rule
// matters: if a plugin closes its socket, the kubelet keeps counting the old
// devices, as unhealthy, for five minutes, and a GPU that moved to another
// resource (whole → blocks, say) would be counted twice. For the same
// reason Update publishes resources that lose devices before those that
// gain them, and waits (a second at most) until the shrunk lists have gone
// out on every ListAndWatch stream: the kubelet never sees a GPU in two
// resources. Check runs the
// same validation without applying anything, so a caller can refuse a
// layout before acting on it (the daemon checks a new config's plan before
// it writes the CDI spec for it).
//
// # What the kubelet sees
//
// Per resource, the kubelet gets GetDevicePluginOptions (preferred
// allocation on, no PreStartContainer), a ListAndWatch stream that carries
// the full device list at once and after every change (a stream that falls
// behind skips to the newest list), GetPreferredAllocation and Allocate.
// Both check the requested IDs against the current snapshot first: IDs the
// resource does not offer, the same ID twice, or (in an Allocate for several
// containers) one device for two containers, are refused with
// codes.InvalidArgument and a message naming the IDs and the resource. IDs
// in messages are quoted and cut to MaxQuotedID bytes (QuoteID), ten at
// most, since a request's IDs can be of any length. A request that does not
// decode (a device ID that is not UTF-8, say) is codes.InvalidArgument too,
// not gRPC's own codes.Internal (see codec.go). A dropped resource has no
// Resource to ask: GetPreferredAllocation is refused with
// codes.FailedPrecondition. The Resource only ever sees well-formed
// requests, and its preferred allocation is checked in turn: one naming a
// device twice, or one the resource does not offer, is codes.Internal.
//
// # Hot path
//
// Allocate and GetPreferredAllocation run while a pod is being admitted, so
// they must cost about as much as an empty gRPC round trip. Handlers load
// the snapshot through one atomic pointer, take no lock and do no I/O;
// everything derived from the device list (the ID → position index, the
// ListAndWatch message) is computed once, in Update; repeated IDs are found
// with a bitset over device positions, on the stack for up to 1,024 devices. Resources are expected to do the
// same with their Allocate responses.
//
// # Kubelet restarts
//
// When the kubelet starts it deletes every socket in the device-plugin
// directory and creates kubelet.sock. The Manager watches the directory
// (fsnotify, plus a periodic check as a safety net): a vanished plugin
// socket is served again, and a new kubelet.sock makes every resource
// register again, so the plugin never needs a restart. Each resource
// registers once per kubelet: a connection counts only if it was made to
// one unchanged kubelet.sock with the resource's own socket still in place,
// otherwise the attempt is dropped and made again (kubelet 1.37 refuses a
// second registration of a resource, and then every later one until it
// restarts). Registration retries with exponential backoff (100 ms to 5 s
// by default) while the kubelet is away, and logs every failed attempt.
// Registered and WaitRegistered report when every resource is registered
// with the current kubelet, for a readiness probe.
//
// # Errors
//
// Errors wrap one sentinel per failure class (ErrInvalidResource,
// ErrUnknownDevice, ErrDuplicateDevice, ErrBadRequest, ErrNoDevices,
// ErrWatcherClosed, ErrAlreadyRunning).
// Over gRPC, request errors arrive as codes.InvalidArgument; a Resource's
// own gRPC status errors keep their code.
package plugin

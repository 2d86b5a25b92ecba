// Package draplugin serves the kubelet's Dynamic Resource Allocation API
// for the node's GPUs (DESIGN §9), through the kubelet plugin helper of
// k8s.io/dynamic-resource-allocation: registration, the DRA gRPC service
// (v1 and v1beta1) and the ResourceSlice controller are the library's; no
// registration or slice write is hand-written here.
//
// # Publishing
//
// Package dra builds the node's pool (devices gpu-<i>, gpu-<i>-blocks,
// gpu-<i>-mig-…, counters that keep a GPU's devices apart). Publish hands
// it to the ResourceSlice controller as the pool named after the node, and
// remembers it as the set of devices a claim may be prepared from. The
// controller writes slices in the background; Publish never waits for the
// API server, and the newest pool always wins.
//
// # Preparing
//
// The scheduler allocates; the kubelet then calls NodePrepareResources,
// which the helper turns into PrepareResourceClaims with the claims
// fetched. For each device of a claim allocated from this node's pool the
// driver checks that the node publishes it and that it is healthy (no
// unhealthy taint), and that it double-assigns nothing (usage.go): a GPU is
// held whole by one claim, or shared by blocks claims up to 100 blocks, or
// split into MIG devices that each belong to one claim. The scheduler's
// shared counters should make these checks redundant; they are the last
// line of defence when they are not (feature gates off, a stale
// allocation, a restarted node). Devices of prepared claims count whether
// or not they are still published: a configuration change never frees a
// GPU that a running pod holds.
//
// Each device is answered with CDI device names: the base spec's
// gpublocks.io/gpu=<uuid> (package cdi's spec, by GPU or MIG UUID), and,
// once per request, gpublocks.io/claim=<claim-uid>-<request> from the
// claim's own spec (<cdi-dir>/gpublocks.io-claim_<claim-uid>.yaml,
// cdi.ClaimSpecs), which carries the request's environment:
// GPUBLOCKS_GPU_UUID, and for blocks the environment the device plugin
// sets too (blocks.SetEnv: GPUBLOCKS_BLOCKS, the MPS limits) with k = the
// allocation's consumedCapacity.blocks, plus GPUBLOCKS_SHARE_ID. The
// claim spec holds environment only; device nodes and driver files stay
// in the base spec, which no claim ever rewrites.
//
// # Surviving restarts
//
// Prepared claims are recorded in <kubelet-plugins-dir>/<driver>/
// checkpoint.json (versioned, checksummed, written atomically) before
// prepare reports success, and removed from it after unprepare has removed
// the claim's spec. Start loads it, so a restarted or killed plugin still
// knows every device it handed out and never hands one out twice; a
// checkpoint it cannot read stops Start with an error rather than
// forgetting claims. A claim spec without a checkpoint entry (a prepare
// that died half-way, never reported) is removed at start. Prepare and
// unprepare are idempotent: a prepared claim gets the same answer again
// (its spec rewritten if it vanished), an unknown claim unprepares
// successfully.
//
// # MIG instances
//
// A MIG-enabled GPU publishes every free placement of its allowed profiles
// (package shape, DESIGN §10); such a device has no uuid attribute until
// its instance exists. With Options.MIG, preparing it creates the instance
// (GPU instance and one spanning compute instance), or reuses an idle one
// that matches, then checkpoints the claim with the MIG UUID and whether
// this driver created it, then asks Options.MIG to refresh (discover the
// GPUs again, rewrite the base spec, republish) before it answers, so that
// gpublocks.io/gpu=<MIG-UUID> exists when the container starts. A create
// that fails destroys what it created and prepares nothing. Two claims
// never hold one placement, nor overlapping ones (usage.go), whether or not
// the instance exists yet.
//
// Unprepare destroys only the instances this driver created, after the
// claim's spec is removed; one running a process (mig.ErrBusy) fails the
// unprepare, which the kubelet retries, and one already gone counts as
// destroyed. An instance that existed before its claim is never destroyed.
// A claim whose instances are being created is checkpointed as pending
// before the first one is: a driver killed half-way finds it at start
// (its placements still held), the kubelet's retry finishes it, counting
// the idle instance at its placement as created, and its unprepare
// destroys it. Start itself never destroys an instance.
//
// # Health
//
// Health is the published pool's: package dra puts the unhealthy taint on
// every device of a GPU the health monitor marked (DESIGN §7, §9), so the
// scheduler stops allocating it, and Prepare refuses tainted devices. The
// kubelet's per-device health stream (DRAResourceHealth, shown in the
// status of the pods that use a device) is served from the same taints:
// WatchHealthStatus reports every published device at once, again after
// each Publish that changes a device's health, and every 10 s in between
// (the kubelet forgets a device's health after 30 s without a report).
package draplugin

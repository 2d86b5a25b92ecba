// Package image assembles gpublocks' container image without a container
// engine: the built binary plus the glibc runtime it needs, taken from
// Debian packages that apt downloads and verifies, written as one OCI image
// archive that `ctr images import`, `skopeo copy oci-archive:` and
// `docker load` all read.
//
// The archive is reproducible: file times come from one input timestamp
// (the commit's, like SOURCE_DATE_EPOCH), owners are root, entries are
// sorted, and gzip carries no name or time, so the same binary, packages
// and labels give the same digest on any machine.
//
// Nothing here runs on the node: the package lives in the deployments
// module so that the product never links go-containerregistry.
package image

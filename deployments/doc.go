// Package deployments holds gpublocks' Kubernetes manifests (static/ for the
// device-plugin mode, static-dra/ for DRA), the Helm chart (helm/gpublocks/)
// and examples (examples/), and the tests that check them. It is its own Go
// module so that the product module never depends on Helm or on
// k8s.io/kubernetes (whose API validation the tests run over every shipped
// object). The tests import the product for config.Parse and config.LoadDir,
// and, for DRA, the ResourceSlices dra.BuildPool publishes for simulated GPUs
// (gpu/sim); they read internal/cli/flags.go as source.
//
//	cd deployments && go test -count=1 ./...
package deployments

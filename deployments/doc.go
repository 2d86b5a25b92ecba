// Package deployments holds gpublocks' Kubernetes manifests (static/), the
// Helm chart (helm/gpublocks/) and example ConfigMaps (examples/), and the
// tests that check them. It is its own Go module so that the product module
// never depends on Helm; the tests import the product only for config.Parse
// and config.LoadDir, and read cmd/gpublocks/flags.go as source.
//
//	cd deployments && go test -count=1 ./...
package deployments

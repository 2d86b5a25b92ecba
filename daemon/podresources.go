package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// DefaultPodResourcesSocket is where the kubelet serves the PodResources API.
const DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// errNoPodResources means the PodResources socket does not exist (outside a
// cluster): nothing counts as allocated.
var errNoPodResources = errors.New("kubelet pod-resources socket not found")

// listAllocated asks the kubelet which device IDs of each resource are
// assigned to pods that still exist, waiting at most timeout for the
// answer.
func listAllocated(ctx context.Context, socket string, timeout time.Duration) (map[string][]string, error) {
	if _, err := os.Stat(socket); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", errNoPodResources, socket)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("pod-resources: %w", err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := podresourcesapi.NewPodResourcesListerClient(conn).List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("pod-resources List at %s: %w", socket, err)
	}
	out := map[string][]string{}
	for _, pod := range resp.PodResources {
		for _, c := range pod.Containers {
			for _, d := range c.Devices {
				out[d.ResourceName] = append(out[d.ResourceName], d.DeviceIds...)
			}
		}
	}
	return out, nil
}

package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
	"github.com/gpublocks/gpublocks/shape"
)

// maxDemoWait is the longest quiet period the demo waits out.
const maxDemoWait = 5 * time.Second

// showFault raises XID 48 (a double-bit ECC error) on the first blocks GPU,
// shows its blocks going unhealthy in ListAndWatch, and, when the quiet
// period is short, shows them recover.
func showFault(ctx context.Context, w io.Writer, d *daemon.Daemon, backend gpu.Backend, kubelet *fakekubelet.Kubelet) error {
	sb, ok := backend.(*sim.Backend)
	st := d.State()
	if !ok || st == nil {
		return nil
	}
	var target *gpu.GPU
	for _, a := range st.Plan.GPUs {
		if a.Shape == shape.Blocks {
			target = a.GPU
			break
		}
	}
	if target == nil {
		return nil
	}
	name := st.Config.ResourceName(st.Config.Blocks.ResourceName)
	p, err := kubelet.Plugin(ctx, name)
	if err != nil {
		return err
	}
	onTarget := func(devs []*pluginapi.Device) (healthy, unhealthy int) {
		for _, dev := range devs {
			if !strings.HasPrefix(dev.ID, target.UUID+"::") {
				continue
			}
			if dev.Health == pluginapi.Healthy {
				healthy++
			} else {
				unhealthy++
			}
		}
		return healthy, unhealthy
	}

	fmt.Fprintf(w, "\n== Fault: XID 48 (double-bit ECC error) on GPU %d (%s), a blocks GPU\n", target.Index, target.UUID)
	start := time.Now()
	for {
		err := sb.InjectXID(target.Index, 48)
		if err == nil {
			break
		}
		if !errors.Is(err, sim.ErrNoListener) {
			return err
		}
		select { // the health monitor is still registering
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := p.WaitFor(ctx, func(devs []*pluginapi.Device) bool { _, bad := onTarget(devs); return bad == 100 }); err != nil {
		return err
	}
	fmt.Fprintf(w, "   ListAndWatch after %s: all 100 blocks of GPU %d Unhealthy; %s now has %d healthy of %d\n",
		time.Since(start).Round(time.Millisecond), target.Index, name, p.Healthy(), len(p.Devices()))

	quiet := st.Config.Health.QuietPeriod.Duration
	if quiet > maxDemoWait {
		fmt.Fprintf(w, "   they return to Healthy after a %s quiet period with a passing probe (not waited for here)\n", quiet)
		return nil
	}
	start = time.Now()
	if err := p.WaitFor(ctx, func(devs []*pluginapi.Device) bool { good, _ := onTarget(devs); return good == 100 }); err != nil {
		return err
	}
	fmt.Fprintf(w, "   recovered after %s (quiet period %s, probe passed): %s has %d healthy of %d again\n",
		time.Since(start).Round(100*time.Millisecond), quiet, name, p.Healthy(), len(p.Devices()))
	return nil
}

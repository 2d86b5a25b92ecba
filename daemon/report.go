package daemon

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/blocks"
)

// WriteReport prints the state as the tables `gpublocks inspect` shows:
// GPUs and their shapes, MIG devices, resources with their device counts,
// and the devices of each resource.
func (s *State) WriteReport(w io.Writer, backend string) error {
	inv := s.Inventory
	src := s.Source.Reason
	if s.Source.Path != "" {
		src = fmt.Sprintf("%s (%s)", s.Source.Path, s.Source.Reason)
	}
	fmt.Fprintf(w, "Backend: %s\nDriver: %s (CUDA %d.%d)\nConfig: %s\n\n", backend, inv.DriverVersion, inv.CUDADriverVersion/1000, inv.CUDADriverVersion%1000/10, src)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GPU\tUUID\tMODEL\tMEMORY\tNUMA\tPCI\tMIG\tSHAPE\tNOTE")
	for _, a := range s.Plan.GPUs {
		g := a.GPU
		mig := "disabled"
		if g.MigEnabled {
			mig = "enabled"
		} else if !g.MigCapable {
			mig = "n/a"
		}
		numa := "-"
		if g.NUMANode >= 0 {
			numa = fmt.Sprint(g.NUMANode)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d MiB\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.UUID, g.Model, g.MemoryMiB, numa, dash(g.PCIBusID), mig, a.Shape, a.Reason)
		for _, d := range g.MigDevices {
			note := ""
			if d.CapErr != nil {
				note = "not offered: " + d.CapErr.Error()
			}
			fmt.Fprintf(tw, "  %d:%d\t%s\t%s (GI %d, CI %d)\t%d MiB\t\t\t\t\t%s\n", g.Index, d.Index, d.UUID, d.Profile, d.GI, d.CI, d.MemoryMiB, note)
		}
	}
	for _, sk := range inv.Skipped {
		fmt.Fprintf(tw, "-\t%s\t\t\t\t\t\tnone\t%v\n", sk.Device, sk.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(s.MigLayouts) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GPU\tMIG LAYOUT\tSTATUS")
		for i := range s.MigLayouts {
			l := &s.MigLayouts[i]
			fmt.Fprintf(tw, "%d\t%s\t%s\n", l.GPU, l.Layout, l.report())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tDEVICES\tHEALTHY\tDEVICE IDS")
	for _, r := range s.Resources {
		devs := r.Devices()
		healthy := 0
		for _, d := range devs {
			if d.Health == pluginapi.Healthy {
				healthy++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Name(), len(devs), healthy, summarizeIDs(devs))
	}
	if len(s.Resources) == 0 {
		fmt.Fprintln(tw, "(none)\t0\t0\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Plan.Warnings) > 0 || len(s.Omissions) > 0 {
		fmt.Fprintln(w, "\nWarnings:")
		for _, m := range s.Plan.Warnings {
			fmt.Fprintf(w, "  - %s\n", m)
		}
		for _, o := range s.Omissions {
			fmt.Fprintf(w, "  - CDI: %v\n", o.Err)
		}
	}
	return nil
}

// summarizeIDs lists device IDs, folding the 100 blocks of a GPU into
// "<uuid>::0..99".
func summarizeIDs(devs []*pluginapi.Device) string {
	var parts []string
	counts := map[string]int{}
	var order []string
	for _, d := range devs {
		if uuid, _, err := blocks.ParseID(d.ID); err == nil {
			if counts[uuid] == 0 {
				order = append(order, uuid)
			}
			counts[uuid]++
			continue
		}
		parts = append(parts, d.ID)
	}
	for _, u := range order {
		parts = append(parts, fmt.Sprintf("%s::0..%d", u, counts[u]-1))
	}
	return strings.Join(parts, " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

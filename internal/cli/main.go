// Package cli is the gpublocks command line, shared by the two
// executables: gpublocks (the device plugin and every tool) and
// gpublocks-dra (the same, plus DRA mode). See README.md.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/gpu"
)

// DRA is DRA mode's code: it links client-go and the Kubernetes API types,
// so only the gpublocks-dra executable passes it (internal/draserve).
type DRA struct {
	// Start starts the kubelet DRA plugin and sets o.Publisher.
	// b is the GPUs' backend, through which MIG instances are made.
	Start func(ctx context.Context, o *daemon.Options, f DRAFlags, b gpu.Backend) (DRADriver, error)
	// WriteSlices prints the ResourceSlices a state publishes.
	WriteSlices func(w io.Writer, st *daemon.State, node string) error
}

// DRAFlags are DRA mode's settings beyond daemon.Options.
type DRAFlags struct {
	Kubeconfig   string // "" = in-cluster
	RegistrarDir string
	PluginsDir   string
}

// DRADriver is the running DRA plugin.
type DRADriver interface {
	// Bind hands the plugin the daemon once it exists: a MIG instance
	// made for a claim is rescanned through it before prepare answers.
	Bind(d *daemon.Daemon)
	Stop()
	// Fatal delivers an error the plugin cannot recover from: serve ends.
	Fatal() <-chan error
}

// Main runs the command line and returns the exit status. Without dra,
// DRA mode is handed to the gpublocks-dra executable.
func Main(dra *DRA) int {
	if err := NewRootCommand(dra).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gpublocks:", err)
		return 1
	}
	return 0
}

// NewRootCommand builds the command line; dra as for Main.
func NewRootCommand(dra *DRA) *cobra.Command {
	root := &cobra.Command{
		Use:           "gpublocks",
		Short:         "Share NVIDIA GPUs in Kubernetes: whole, MIG or 100 time-sliced blocks per GPU",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd)
		},
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlagSet(klogFlags)
	root.AddCommand(newServeCommand(dra), newInspectCommand(dra), newCDICommand(), newDemoCommand(), newConfigCommand(), newVersionCommand())
	return root
}

// envName is the variable that sets a flag: GPUBLOCKS_<FLAG_IN_UPPER_SNAKE>.
func envName(flag string) string {
	return "GPUBLOCKS_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// bindEnv fills every flag the command line did not set from its
// GPUBLOCKS_* variable: a flag wins over the environment, which wins over
// the default.
func bindEnv(cmd *cobra.Command) error {
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err))
			}
			f.Changed = true
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("bad environment: %s", strings.Join(errs, "; "))
	}
	return nil
}

func logContext(cmd *cobra.Command) context.Context {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return klog.NewContext(ctx, klog.Background())
}

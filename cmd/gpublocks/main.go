// Command gpublocks is the gpublocks node agent: a Kubernetes device plugin
// and CDI provider that offers each NVIDIA GPU whole, as MIG devices or as
// 100 time-sliced blocks. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gpublocks:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
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
	root.AddCommand(newServeCommand(), newInspectCommand(), newCDICommand(), newDemoCommand(), newConfigCommand(), newVersionCommand())
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

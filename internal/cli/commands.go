package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/demo"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// version is set at build time with -ldflags
// "-X github.com/gpublocks/gpublocks/internal/cli.version=…".
var version = "dev"

func newServeCommand(dra *DRA) *cobra.Command {
	var o daemon.Options
	var df DRAFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the node's GPUs to the kubelet and keep the CDI spec current",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkKubeletAPI(o); err != nil {
				return err
			}
			if o.KubeletAPI == daemon.KubeletAPIDRA && dra == nil {
				return execDRA()
			}
			ctx := logContext(cmd)
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			logger := klog.FromContext(ctx)
			logger.Info("Starting gpublocks", "version", version, "kubeletAPI", o.KubeletAPI)
			backend, err := daemon.OpenBackend(ctx, o)
			if err != nil {
				return err
			}
			defer func() { _ = backend.Close() }()
			var drv DRADriver
			if o.KubeletAPI == daemon.KubeletAPIDRA {
				drv, err = dra.Start(ctx, &o, df, backend)
				if err != nil {
					return err
				}
				defer drv.Stop()
				// A fatal driver error ends serve, so the DaemonSet
				// restarts it.
				var cancel context.CancelCauseFunc
				ctx, cancel = context.WithCancelCause(ctx)
				defer cancel(nil)
				go func() {
					select {
					case err := <-drv.Fatal():
						cancel(err)
					case <-ctx.Done():
					}
				}()
			}
			d, err := daemon.New(ctx, o, backend)
			if err != nil {
				return err
			}
			if drv != nil {
				drv.Bind(d)
			}
			defer reloadOnHangup(ctx, d)()
			err = d.Run(ctx)
			if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause
			}
			logger.Info("Stopped", "err", err)
			return err
		},
	}
	addServeFlags(cmd.Flags(), &o, &df)
	return cmd
}

// checkKubeletAPI refuses an unknown --kubelet-api, and DRA mode without
// the node's name: the pool is named after the node.
func checkKubeletAPI(o daemon.Options) error {
	switch o.KubeletAPI {
	case daemon.KubeletAPIDevicePlugin:
		return nil
	case daemon.KubeletAPIDRA:
		if o.NodeName == "" {
			return errors.New("--kubelet-api dra needs --node-name (in a pod, set GPUBLOCKS_NODE_NAME from the downward API's spec.nodeName)")
		}
		return nil
	}
	return fmt.Errorf("--kubelet-api %q is not one of %s, %s", o.KubeletAPI, daemon.KubeletAPIDevicePlugin, daemon.KubeletAPIDRA)
}

func newInspectCommand(dra *DRA) *cobra.Command {
	var o daemon.Options
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show the GPUs, their shapes, and the resources and devices serve would offer",
		Long: `Show the GPUs, their shapes, and the resources and devices serve would offer.
With --kubelet-api dra it prints, as YAML, the ResourceSlices serve would
publish for this node (named by --node-name, else the host name), without
asking an API server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := logContext(cmd)
			if o.KubeletAPI != daemon.KubeletAPIDRA {
				if err := checkKubeletAPI(o); err != nil {
					return err
				}
			} else if dra == nil {
				return execDRA()
			}
			st, backend, err := computeOnce(ctx, o)
			if err != nil {
				return err
			}
			if o.KubeletAPI == daemon.KubeletAPIDRA {
				return dra.WriteSlices(cmd.OutOrStdout(), st, o.NodeName)
			}
			return st.WriteReport(cmd.OutOrStdout(), backend)
		},
	}
	addDiscoveryFlags(cmd.Flags(), &o)
	addKubeletAPIFlag(cmd.Flags(), &o)
	return cmd
}

func newCDICommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cdi", Short: "CDI spec tools"}
	var o daemon.Options
	var output string
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Print (or write) the CDI spec that serve would write",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := logContext(cmd)
			st, _, err := computeOnce(ctx, o)
			if err != nil {
				return err
			}
			if err := cdi.ValidateSpec(st.Spec); err != nil {
				return err
			}
			data, err := cdi.Marshal(st.Spec)
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			// As serve writes it: a runtime watching the directory never
			// sees half a file, and the mode is 0644 even when it existed.
			return atomicfile.Write(output, data, cdi.SpecFileMode)
		},
	}
	addDiscoveryFlags(gen.Flags(), &o)
	gen.Flags().StringVar(&output, "output", "-", "file to write, or - for standard output")
	cmd.AddCommand(gen)
	return cmd
}

func newDemoCommand() *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Serve simulated GPUs to a built-in kubelet stand-in and show what example containers receive",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.Run(logContext(cmd), cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().StringVar(&o.Simulate, "simulate", demo.DefaultPreset, "simulated hardware: a preset or a YAML file")
	cmd.Flags().StringVar(&o.ConfigPath, "config", "", "config file or directory; default: the demo's own (GPUs 2-3 as blocks)")
	return cmd
}

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Config tools"}
	var o daemon.Options
	validate := &cobra.Command{
		Use:   "validate FILE|DIR",
		Short: "Check a config file or a directory of named configs (exit 1 when invalid)",
		Long: `Check a config file or a directory of named configs (exit 1 when invalid).
Given where to find GPUs (--simulate, --driver-root or --dev-root), it also
checks each config's MIG layouts against this node's GPUs, as serve does
when it loads a config: MIG mode on, profiles the model offers, a layout
that fits.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := os.Stat(args[0])
			if err != nil {
				return err
			}
			node, err := nodeChecker(cmd, o)
			if err != nil {
				return err
			}
			defer node.close()
			if !st.IsDir() {
				cfg, err := config.LoadFile(args[0])
				if err == nil {
					err = node.check(cmd, cfg)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", args[0])
				return nil
			}
			set, err := config.LoadDir(args[0])
			if err != nil {
				return err
			}
			errs := []error{set.Err()}
			for _, n := range set.Names() {
				if set.Errors[n] != nil {
					continue
				}
				if err := node.check(cmd, set.Configs[n]); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", set.Files[n], err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", set.Files[n])
			}
			return errors.Join(errs...)
		},
	}
	fs := validate.Flags()
	fs.StringVar(&o.Simulate, "simulate", "", "check MIG layouts against simulated GPUs: a preset (dgxa100, dgxh100, dgxa100-mig) or a YAML file")
	fs.StringVar(&o.DriverRoot, "driver-root", "/", "check MIG layouts against this node's GPUs, with the NVIDIA driver under this root")
	fs.StringVar(&o.DevRoot, "dev-root", "/", "root holding dev/nvidia* and proc/driver/nvidia* (the host's /), with --driver-root")
	addKubeletAPIFlag(fs, &o)
	cmd.AddCommand(validate)
	return cmd
}

// migChecker checks configs' MIG layouts against a node's GPUs; without a
// backend it checks nothing.
type migChecker struct {
	backend gpu.Backend
	inv     *gpu.Inventory
	api     string
}

// nodeChecker opens the GPUs that config validate's discovery flags name,
// if any was given.
func nodeChecker(cmd *cobra.Command, o daemon.Options) (*migChecker, error) {
	fs := cmd.Flags()
	if !fs.Changed("simulate") && !fs.Changed("driver-root") && !fs.Changed("dev-root") {
		return &migChecker{}, nil
	}
	if o.KubeletAPI != daemon.KubeletAPIDevicePlugin && o.KubeletAPI != daemon.KubeletAPIDRA {
		return nil, fmt.Errorf("--kubelet-api %q is not one of %s, %s", o.KubeletAPI, daemon.KubeletAPIDevicePlugin, daemon.KubeletAPIDRA)
	}
	ctx := logContext(cmd)
	b, err := daemon.OpenBackend(ctx, o)
	if err != nil {
		return nil, err
	}
	inv, err := gpu.Discover(ctx, b)
	if err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("discovering GPUs with %s: %w", b.Name(), err)
	}
	return &migChecker{backend: b, inv: inv, api: o.KubeletAPI}, nil
}

func (c *migChecker) check(cmd *cobra.Command, cfg *config.Config) error {
	if c.backend == nil {
		return nil
	}
	return daemon.CheckMigLayouts(logContext(cmd), c.backend, c.inv, cfg, c.api)
}

func (c *migChecker) close() {
	if c.backend != nil {
		_ = c.backend.Close()
	}
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v := version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gpublocks %s %s/%s %s\n", v, runtime.GOOS, runtime.GOARCH, runtime.Version())
		},
	}
}

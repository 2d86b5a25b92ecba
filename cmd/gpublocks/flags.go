package main

import (
	"github.com/spf13/pflag"

	"github.com/gpublocks/gpublocks/daemon"
)

// addDiscoveryFlags registers the flags every command that looks at GPUs
// shares (DESIGN §3).
func addDiscoveryFlags(fs *pflag.FlagSet, o *daemon.Options) {
	fs.StringVar(&o.ConfigPath, "config", "", "config file, or directory of named configs (a mounted ConfigMap); built-in defaults when empty")
	fs.StringVar(&o.NodeName, "node-name", "", "this node's name, to read its gpublocks.io/config label (needs in-cluster API access)")
	fs.StringVar(&o.DriverRoot, "driver-root", "/", "root holding the NVIDIA driver's libraries and tools")
	fs.StringVar(&o.DevRoot, "dev-root", "/", "root holding dev/nvidia* and proc/driver/nvidia* (the host's /)")
	fs.StringVar(&o.Simulate, "simulate", "", "use simulated GPUs: a preset (dgxa100, dgxh100, dgxa100-mig) or a YAML file")
	fs.StringVar(&o.CDIDir, "cdi-dir", "/var/run/cdi", "directory for the CDI spec")
}

// addKubeletAPIFlag registers --kubelet-api, which serve and inspect share.
func addKubeletAPIFlag(fs *pflag.FlagSet, o *daemon.Options) {
	fs.StringVar(&o.KubeletAPI, "kubelet-api", daemon.KubeletAPIDevicePlugin, "the kubelet API to serve: device-plugin, or dra (Dynamic Resource Allocation: the scheduler picks the GPU and the share)")
}

// draFlags are the settings of DRA mode that only the command needs.
type draFlags struct {
	kubeconfig   string
	registrarDir string
	pluginsDir   string
}

func addServeFlags(fs *pflag.FlagSet, o *daemon.Options, df *draFlags) {
	addDiscoveryFlags(fs, o)
	addKubeletAPIFlag(fs, o)
	fs.StringVar(&df.kubeconfig, "kubeconfig", "", "kubeconfig for the API server in DRA mode; in-cluster credentials when empty")
	fs.StringVar(&df.registrarDir, "kubelet-registrar-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory (DRA mode)")
	fs.StringVar(&df.pluginsDir, "kubelet-plugins-dir", "/var/lib/kubelet/plugins", "the kubelet's plugins directory, for the DRA socket and checkpoint (DRA mode)")
	fs.StringVar(&o.PluginDir, "device-plugin-dir", "/var/lib/kubelet/device-plugins", "the kubelet's device-plugin directory")
	fs.StringVar(&o.PodResourcesSocket, "pod-resources-socket", daemon.DefaultPodResourcesSocket, "the kubelet's PodResources API, asked before a GPU with allocated devices changes shape")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9400", `address for /metrics, /healthz and /readyz; "" disables`)
	fs.StringVar(&o.SimulateAddr, "simulate-addr", "127.0.0.1:9401", `loopback address for fault injection (POST /simulate/...) with --simulate; "" disables`)
}

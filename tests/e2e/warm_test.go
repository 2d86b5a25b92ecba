package e2e

import (
	_ "github.com/opencontainers/runtime-spec/specs-go"
	_ "github.com/stretchr/testify/require"
	_ "k8s.io/klog/v2"
	_ "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	_ "tags.cncf.io/container-device-interface/pkg/cdi"
)

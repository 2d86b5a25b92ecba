{{/* The chart's name, for labels. */}}
{{- define "gpublocks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of every object: the release name, unless it lacks the chart's. */}}
{{- define "gpublocks.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gpublocks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpublocks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gpublocks.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gpublocks.selectorLabels" . }}
app.kubernetes.io/version: {{ include "gpublocks.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gpublocks.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "gpublocks.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "gpublocks.tag" .) -}}
{{- end -}}

{{- define "gpublocks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gpublocks.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gpublocks.configMapName" -}}
{{- if .Values.existingConfigMap -}}
{{- .Values.existingConfigMap -}}
{{- else -}}
{{- printf "%s-config" (include "gpublocks.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
--driver-root as the container sees it: the host's driverRoot below the /host
mount of the host's /. The plugin strips --dev-root (/host) again to publish
host paths in the CDI spec.
*/}}
{{- define "gpublocks.driverRoot" -}}
{{- $drv := clean .Values.paths.driverRoot -}}
{{- if not (isAbs $drv) -}}
{{- fail (printf "paths.driverRoot (%s) must be an absolute host path such as / or /run/nvidia/driver" $drv) -}}
{{- else if eq $drv "/" -}}
/host
{{- else -}}
{{- printf "/host%s" $drv -}}
{{- end -}}
{{- end -}}

{{/*
The kubelet API the release serves, validated: "device-plugin" or "dra".
DRA's resource.k8s.io/v1 exists from Kubernetes 1.34 on.
*/}}
{{- define "gpublocks.kubeletAPI" -}}
{{- $api := .Values.kubeletAPI | toString -}}
{{- if not (has $api (list "device-plugin" "dra")) -}}
{{- fail (printf "kubeletAPI (%s) must be device-plugin (extended resources such as nvidia.com/gpu) or dra (Dynamic Resource Allocation, Kubernetes >= 1.34)" $api) -}}
{{- end -}}
{{- if and (eq $api "dra") (not (semverCompare ">=1.34.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "kubeletAPI=dra needs Kubernetes >= 1.34 (resource.k8s.io/v1), the cluster is %s: use kubeletAPI=device-plugin, or pass helm template --kube-version" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $api -}}
{{- end -}}

{{/* "true" when the release serves DRA, else empty. */}}
{{- define "gpublocks.dra" -}}
{{- if eq (include "gpublocks.kubeletAPI" .) "dra" -}}true{{- end -}}
{{- end -}}

{{/* The DaemonSet's component label: which kubelet API its pods serve. */}}
{{- define "gpublocks.component" -}}
{{- if include "gpublocks.dra" . -}}dra-kubelet-plugin{{- else -}}device-plugin{{- end -}}
{{- end -}}

{{/* Object names: "<release>-vmlease", or the release name when it already contains it. */}}
{{- define "vmlease.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* 50 characters above leave room for the "-operator"/"-agent" suffixes within 63. */}}
{{- define "vmlease.operator.fullname" -}}{{ include "vmlease.fullname" . }}-operator{{- end -}}
{{- define "vmlease.agent.fullname" -}}{{ include "vmlease.fullname" . }}-agent{{- end -}}

{{- define "vmlease.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vmlease
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "vmlease.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vmlease.operator.selectorLabels" -}}
{{ include "vmlease.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "vmlease.agent.selectorLabels" -}}
{{ include "vmlease.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "vmlease.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* prometheus.io annotations, when metrics.podAnnotations is on. */}}
{{- define "vmlease.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The agent's shared volume, from agent.sharedVolume.type; a missing setting fails the render
with a message naming the value to set. */}}
{{- define "vmlease.agent.sharedVolume" -}}
{{- $v := .Values.agent.sharedVolume -}}
{{- if eq $v.type "hostPath" -}}
hostPath:
  path: {{ required "agent.sharedVolume.hostPath.path is required with sharedVolume.type hostPath" $v.hostPath.path }}
  type: Directory
{{- else if eq $v.type "nfs" -}}
nfs:
  server: {{ required "agent.sharedVolume.nfs.server is required with sharedVolume.type nfs" $v.nfs.server }}
  path: {{ required "agent.sharedVolume.nfs.path is required with sharedVolume.type nfs" $v.nfs.path }}
{{- else if eq $v.type "existingClaim" -}}
persistentVolumeClaim:
  claimName: {{ required "agent.sharedVolume.existingClaim.name is required with sharedVolume.type existingClaim" $v.existingClaim.name }}
{{- else -}}
{{- fail (printf "agent.sharedVolume.type must be hostPath, nfs or existingClaim, not %q" $v.type) -}}
{{- end -}}
{{- end -}}

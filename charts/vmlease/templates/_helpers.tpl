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

{{/*
A hook Job running the operator image with .args (operator/vmlease_operator/hooks.py), as
ServiceAccount .name; .hook: the hook annotations. A few seconds' work each: retried twice, then
the helm command fails with the Job's log to read.
*/}}
{{- define "vmlease.hookJob" -}}
{{- $root := .root }}
{{- $op := $root.Values.operator }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "vmlease.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    {{- toYaml (merge (dict "helm.sh/hook-weight" "0") .hook) | nindent 4 }}
spec:
  backoffLimit: 2
  activeDeadlineSeconds: 300
  template:
    metadata:
      labels:
        {{- include "vmlease.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      serviceAccountName: {{ .name }}
      restartPolicy: Never
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ .component }}
          image: {{ include "vmlease.image" (dict "image" $op.image "root" $root) }}
          imagePullPolicy: {{ $op.image.pullPolicy }}
          args: {{ toJson (concat .args (list (printf "--log-format=%s" $op.logFormat))) }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          resources:
            {{- toYaml $op.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 16Mi
      {{- with $op.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $op.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

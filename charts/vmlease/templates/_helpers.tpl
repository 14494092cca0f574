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

{{- /*
The upgrade guard, rendered by `helm upgrade` against the live cluster (lookup; `helm template`
sees nothing and passes). The agents adopt their predecessors' holders through the state in
runDir, whose lockspace paths live under the shared volume's mountPath: changing either makes
the new agents unable to adopt, so every node holding a lease would be reset (or its holders
killed). A larger W than the running agents' would let a node run longer than the other hosts
assume. So these changes are refused while any DiskLease is Held or Shared, naming the leases;
a smaller W, or any change with nothing held, passes. agent.upgrade.allowUnsafe=true overrides.
*/}}
{{- define "vmlease.agent.upgradeGuard" -}}
{{- $ag := .Values.agent }}
{{- $old := lookup "apps/v1" "DaemonSet" .Release.Namespace (include "vmlease.agent.fullname" .) }}
{{- if and $old (not $ag.upgrade.allowUnsafe) }}
{{- $was := dict }}
{{- range (index $old.spec.template.spec.containers 0).args }}
{{- $kv := splitn "=" 2 . }}
{{- $_ := set $was $kv._0 (default "" $kv._1) }}
{{- end }}
{{- $changes := list }}
{{- $runDir := index $was "--run-dir" }}
{{- if and $runDir (ne $runDir $ag.runDir) }}
{{- $changes = append $changes (printf "agent.runDir from %s to %s" $runDir $ag.runDir) }}
{{- end }}
{{- $shared := index $was "--shared-dir" }}
{{- if and $shared (ne $shared $ag.sharedVolume.mountPath) }}
{{- $changes = append $changes (printf "agent.sharedVolume.mountPath from %s to %s" $shared $ag.sharedVolume.mountPath) }}
{{- end }}
{{- $w := index $was "--watchdog-fire-timeout" }}
{{- if and $w (gt (int $ag.watchdog.fireTimeoutSeconds) (int $w)) }}
{{- $changes = append $changes (printf "agent.watchdog.fireTimeoutSeconds from %s up to %d" $w (int $ag.watchdog.fireTimeoutSeconds)) }}
{{- end }}
{{- if $changes }}
{{- $held := list }}
{{- $lockspaces := list }}
{{- range (lookup "vmlease.io/v1alpha1" "Lockspace" "" "").items }}
{{- $lockspaces = append $lockspaces .metadata.name }}
{{- end }}
{{- range (lookup "vmlease.io/v1alpha1" "DiskLease" "" "").items }}
{{- $st := .status | default dict }}
{{- /* a deleted Lockspace held nothing when it went: its DiskLeases' status is history */}}
{{- if and (has ($st.phase | default "") (list "Held" "Shared")) (has .spec.lockspace $lockspaces) }}
{{- $node := "" }}
{{- if $st.holder }}{{ $node = printf " on %s" $st.holder.node }}{{ end }}
{{- $held = append $held (printf "%s%s" .metadata.name $node) }}
{{- end }}
{{- end }}
{{- if $held }}
{{- fail (printf "refusing this upgrade: it changes %s while %d disk lease(s) are held (%s). The new agents could not adopt the running holders, and the nodes holding them would be reset or their holders killed. Stop or move those VMs first (or, knowing that, set agent.upgrade.allowUnsafe=true)" (join ", " $changes) (len $held) (join ", " (slice $held 0 (min 5 (len $held))))) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

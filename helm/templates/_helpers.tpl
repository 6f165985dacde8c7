{{/* Names, labels and the pieces every workload shares. */}}

{{- define "sap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sap.fullname" -}}
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

{{/* Selector labels: name, instance, component; never changed once released. */}}
{{- define "sap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sap.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sap.labels" -}}
{{ include "sap.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sovereign-ai-platform
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of objects that belong to no single component. */}}
{{- define "sap.commonLabels" -}}
{{ include "sap.labels" (dict "root" . "component" "platform") }}
{{- end -}}

{{- define "sap.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "sap.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "sap.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "sap.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ .name }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level security: non-root, RuntimeDefault seccomp, no service account token. */}}
{{- define "sap.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.podSecurityContext.runAsUser }}
  runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
  fsGroup: {{ .Values.podSecurityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "sap.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* The control plane's secrets as files; each setting reads NAME_FILE. */}}
{{- define "sap.secretEnv" -}}
{{- range list "SECRET_KEY" "API_KEY_PEPPER" "UPSTREAM_SECRETS_KEY" "DATABASE_URL" "REDIS_URL" "CELERY_BROKER_URL" }}
- name: {{ . }}_FILE
  value: /etc/sap/secrets/{{ . }}
{{- end }}
{{- end -}}

{{- define "sap.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "sap.secretName" . }}
    defaultMode: 0440
{{- end -}}

{{- define "sap.secretMount" -}}
- name: secrets
  mountPath: /etc/sap/secrets
  readOnly: true
{{- end -}}

{{/* Control-plane environment: the ConfigMap, the secret files, the pod's name. */}}
{{- define "sap.controlPlaneEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "sap.fullname" . }}-config
env:
  {{- include "sap.secretEnv" . | nindent 2 }}
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
{{- end -}}

{{- define "sap.modelCacheVolume" -}}
- name: models
{{- if .Values.modelCache.hostPath }}
  hostPath:
    path: {{ .Values.modelCache.hostPath }}
    type: Directory
{{- else }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-models" (include "sap.fullname" .)) .Values.modelCache.existingClaim }}
{{- end }}
{{- end -}}

{{- define "sap.celeryLiveness" -}}
livenessProbe:
  exec:
    command:
      - sh
      - -c
      - exec python -m celery -A controlplane inspect ping -d "worker@$HOSTNAME" --timeout 20
  initialDelaySeconds: 60
  periodSeconds: 60
  timeoutSeconds: 30
  failureThreshold: 3
{{- end -}}

{{/* Gateway workers = its CPU limit (whole CPUs, at least one). */}}
{{- define "sap.gatewayWorkers" -}}
{{- $cpu := toString .Values.gateway.resources.limits.cpu -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (trimSuffix "m" $cpu | atoi) 1000) -}}
{{- else -}}
{{- max 1 (int (float64 $cpu)) -}}
{{- end -}}
{{- end -}}

{{/*
A control-plane Deployment (web, workers, beat, ledger): one container of the platform
image with the ConfigMap and the secret files, a writable data dir and /tmp.
Arguments: root, component, values (the component's values), command, and optional
ports, probes (YAML), strategy, extraVolumes, extraMounts.
*/}}
{{- define "sap.controlPlaneDeployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "sap.fullname" $root }}-{{ .component }}
  labels:
    {{- include "sap.labels" . | nindent 4 }}
spec:
  replicas: {{ .values.replicas }}
  revisionHistoryLimit: 5
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "sap.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "sap.labels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with .values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "sap.podSecurity" $root | nindent 6 }}
      {{- include "sap.imagePullSecrets" $root | nindent 6 }}
      {{- with .values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "sap.image" (dict "root" $root "image" $root.Values.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- include "sap.containerSecurity" $root | nindent 10 }}
          command:
            {{- toYaml .command | nindent 12 }}
          {{- include "sap.controlPlaneEnv" $root | nindent 10 }}
          {{- with .ports }}
          ports:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .probes }}
          {{- . | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          volumeMounts:
            {{- include "sap.secretMount" $root | nindent 12 }}
            - name: data
              mountPath: /var/lib/sap
            - name: tmp
              mountPath: /tmp
            {{- with .extraMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "sap.secretVolume" $root | nindent 8 }}
        - name: data
          emptyDir: {}
        - name: tmp
          emptyDir: {}
        {{- with .extraVolumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{- define "sap.agentLabels" -}}
{{- $items := list -}}
{{- range $key, $value := . }}{{ $items = append $items (printf "%s=%s" $key $value) }}{{ end -}}
{{- join "," $items -}}
{{- end -}}

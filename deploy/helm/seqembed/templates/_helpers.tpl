{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "seqembed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "seqembed.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "seqembed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "seqembed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seqembed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels of every object but the component, which each object names itself. */}}
{{- define "seqembed.commonLabels" -}}
helm.sh/chart: {{ include "seqembed.chart" . }}
app.kubernetes.io/name: {{ include "seqembed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
seqembed.io/model: {{ .Values.model.name | quote }}
{{- end }}

{{/* Labels of the worker's objects. */}}
{{- define "seqembed.labels" -}}
{{ include "seqembed.commonLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "seqembed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "seqembed.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "seqembed.image" -}}
{{- if .Values.image.fullName }}
{{- .Values.image.fullName }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Derived settings ---------------------------------------------------------------------- */}}

{{/* The durable consumer the workers share: consumer.Durable(model) in the Go code. */}}
{{- define "seqembed.durable" -}}
{{- printf "seqembed-%s" .Values.model.name }}
{{- end }}

{{- define "seqembed.modelPath" -}}
{{- if .Values.model.path }}
{{- .Values.model.path }}
{{- else }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.name }}
{{- end }}
{{- end }}

{{- define "seqembed.device" -}}
{{- if .Values.gpu.device }}
{{- .Values.gpu.device }}
{{- else if gt (int .Values.gpu.count) 0 }}
{{- "cuda:all" }}
{{- else }}
{{- "cpu" }}
{{- end }}
{{- end }}

{{/* The most pods there can be: maxReplicas under KEDA, else replicaCount. */}}
{{- define "seqembed.maxPods" -}}
{{- if .Values.autoscaling.enabled }}
{{- int .Values.autoscaling.maxReplicas }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* --max-ack-pending: the value, or max(4096, 1024 × GPUs per pod × the most pods). */}}
{{- define "seqembed.maxAckPending" -}}
{{- if gt (int .Values.worker.maxAckPending) 0 }}
{{- int .Values.worker.maxAckPending }}
{{- else }}
{{- max 4096 (mul 1024 (max 1 (int .Values.gpu.count)) (int (include "seqembed.maxPods" .))) }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: the worker's shutdown timeout plus a margin. */}}
{{- define "seqembed.terminationGracePeriodSeconds" -}}
{{- add (int .Values.worker.shutdownTimeoutSeconds) (int .Values.worker.shutdownGraceMarginSeconds) }}
{{- end }}

{{- define "seqembed.authSecretName" -}}
{{- if .Values.nats.auth.create }}
{{- printf "%s-nats-auth" (include "seqembed.fullname" .) }}
{{- else }}
{{- .Values.nats.auth.existingSecret }}
{{- end }}
{{- end }}

{{/* Paths where Secret files are mounted. */}}
{{- define "seqembed.authDir" -}}/etc/seqembed/nats-auth{{- end }}
{{- define "seqembed.tlsDir" -}}/etc/seqembed/nats-tls{{- end }}

{{/* Checks -------------------------------------------------------------------------------- */}}

{{/* seqembed.validate fails the render on settings that cannot work or would leak a secret. */}}
{{- define "seqembed.validate" -}}
{{- $v := .Values }}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" (toString $v.model.name)) }}
{{- fail (printf "model.name %q: must be model.json's name, letters, digits, '-' and '_' only (it is part of NATS subjects and the consumer name)" $v.model.name) }}
{{- end }}
{{- if not (has $v.model.source (list "pvc" "initContainer" "image")) }}
{{- fail (printf "model.source %q: want pvc, initContainer or image" $v.model.source) }}
{{- end }}
{{- if and (eq $v.model.source "pvc") (not $v.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq $v.model.source "initContainer") (or (not $v.model.initContainer.image) (not (or $v.model.initContainer.command $v.model.initContainer.args))) }}
{{- fail "model.source=initContainer needs model.initContainer.image and its command or args" }}
{{- end }}
{{- if lt (int $v.gpu.count) 0 }}
{{- fail "gpu.count must be ≥ 0" }}
{{- end }}
{{- if and (eq (int $v.gpu.count) 0) (hasPrefix "cuda" (toString $v.gpu.device)) }}
{{- fail (printf "gpu.device %q with gpu.count 0: a CPU-only pod has no GPU" $v.gpu.device) }}
{{- end }}
{{- if le (int $v.worker.shutdownTimeoutSeconds) 0 }}
{{- fail "worker.shutdownTimeoutSeconds must be > 0" }}
{{- end }}
{{- if lt (int $v.worker.shutdownGraceMarginSeconds) 5 }}
{{- fail "worker.shutdownGraceMarginSeconds must be ≥ 5: the kubelet's SIGKILL must not beat the worker's own shutdown timeout" }}
{{- end }}
{{- if or (lt (int $v.worker.streamReplicas) 1) (gt (int $v.worker.streamReplicas) 5) }}
{{- fail "worker.streamReplicas must be 1 to 5 (3 for a 3-server NATS cluster)" }}
{{- end }}
{{- range $a := $v.worker.extraArgs }}
{{- $flag := regexReplaceAll "^--?([a-z-]+).*$" (toString $a) "${1}" }}
{{- if has $flag (list "password" "token") }}
{{- fail (printf "worker.extraArgs: --%s would put a secret on the command line; use nats.auth (a Secret)" $flag) }}
{{- end }}
{{- if has $flag (list "nats" "model" "device" "replicas" "shutdown-timeout" "http-addr" "max-ack-pending" "in-stream" "out-stream" "creds" "nkey" "user" "tls-ca" "tls-cert" "tls-key" "tls-first") }}
{{- fail (printf "worker.extraArgs: --%s is set by the chart; use its value instead" $flag) }}
{{- end }}
{{- end }}
{{- range $e := $v.worker.env }}
{{- if and (has $e.name (list "SEQEMBED_PASSWORD" "SEQEMBED_TOKEN")) (hasKey $e "value") }}
{{- fail (printf "worker.env: %s has a plain value; take it from a Secret (valueFrom.secretKeyRef or nats.auth)" $e.name) }}
{{- end }}
{{- if eq $e.name "SEQEMBED_SHUTDOWN_TIMEOUT" }}
{{- fail "worker.env: SEQEMBED_SHUTDOWN_TIMEOUT: set worker.shutdownTimeoutSeconds (terminationGracePeriodSeconds is derived from it)" }}
{{- end }}
{{- end }}
{{- if contains "@" (toString $v.nats.url) }}
{{- fail "nats.url must not carry credentials (user:password@ or token@); use nats.auth" }}
{{- end }}
{{- if not (has $v.nats.auth.method (list "none" "creds" "nkey" "userPassword" "token")) }}
{{- fail (printf "nats.auth.method %q: want none, creds, nkey, userPassword or token" $v.nats.auth.method) }}
{{- end }}
{{- if and (ne $v.nats.auth.method "none") (not $v.nats.auth.create) (not $v.nats.auth.existingSecret) }}
{{- fail (printf "nats.auth.method=%s needs nats.auth.existingSecret (or create=true with values)" $v.nats.auth.method) }}
{{- end }}
{{- if and $v.nats.tls.enabled (not $v.nats.tls.existingSecret) }}
{{- fail "nats.tls.enabled needs nats.tls.existingSecret" }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- if lt (int $v.autoscaling.minReplicas) 1 }}
{{- fail "autoscaling.minReplicas must be ≥ 1; for scale to zero set autoscaling.scaleToZero=true" }}
{{- end }}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas %d > maxReplicas %d" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- if le (int $v.autoscaling.lagThreshold) 0 }}
{{- fail "autoscaling.lagThreshold must be > 0" }}
{{- end }}
{{- if lt (int $v.autoscaling.activationLagThreshold) 0 }}
{{- fail "autoscaling.activationLagThreshold must be ≥ 0" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod pieces shared by the Deployment and the streams Job ------------------------------- */}}

{{/* NATS connection environment: secrets only through secretKeyRef, files from mounted Secrets. */}}
{{- define "seqembed.natsEnv" -}}
{{- $auth := .Values.nats.auth }}
{{- $secret := include "seqembed.authSecretName" . }}
{{- if eq $auth.method "creds" }}
- name: SEQEMBED_CREDS
  value: {{ printf "%s/%s" (include "seqembed.authDir" .) $auth.keys.creds | quote }}
{{- else if eq $auth.method "nkey" }}
- name: SEQEMBED_NKEY
  value: {{ printf "%s/%s" (include "seqembed.authDir" .) $auth.keys.nkey | quote }}
{{- else if eq $auth.method "userPassword" }}
- name: SEQEMBED_USER
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.keys.user }}
- name: SEQEMBED_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.keys.password }}
{{- else if eq $auth.method "token" }}
- name: SEQEMBED_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.keys.token }}
{{- end }}
{{- with .Values.nats.tls }}
{{- if .enabled }}
- name: SEQEMBED_TLS_CA
  value: {{ printf "%s/%s" (include "seqembed.tlsDir" $) .caKey | quote }}
{{- if .clientCert }}
- name: SEQEMBED_TLS_CERT
  value: {{ printf "%s/%s" (include "seqembed.tlsDir" $) .certKey | quote }}
- name: SEQEMBED_TLS_KEY
  value: {{ printf "%s/%s" (include "seqembed.tlsDir" $) .keyKey | quote }}
{{- end }}
{{- if .handshakeFirst }}
- name: SEQEMBED_TLS_FIRST
  value: "true"
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "seqembed.natsVolumeMounts" -}}
{{- if has .Values.nats.auth.method (list "creds" "nkey") }}
- name: nats-auth
  mountPath: {{ include "seqembed.authDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: {{ include "seqembed.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "seqembed.natsVolumes" -}}
{{- $auth := .Values.nats.auth }}
{{- if has $auth.method (list "creds" "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ include "seqembed.authSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ ternary $auth.keys.creds $auth.keys.nkey (eq $auth.method "creds") }}
        path: {{ ternary $auth.keys.creds $auth.keys.nkey (eq $auth.method "creds") }}
{{- end }}
{{- with .Values.nats.tls }}
{{- if .enabled }}
- name: nats-tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .caKey }}
        path: {{ .caKey }}
{{- if .clientCert }}
      - key: {{ .certKey }}
        path: {{ .certKey }}
      - key: {{ .keyKey }}
        path: {{ .keyKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings of the streams and the durable consumer: the same flags for the worker and `seqembed streams`. */}}
{{- define "seqembed.streamArgs" -}}
- --in-stream={{ .Values.worker.inStream }}
- --out-stream={{ .Values.worker.outStream }}
- --replicas={{ int .Values.worker.streamReplicas }}
- --ack-wait={{ .Values.worker.ackWait }}
- --max-ack-pending={{ include "seqembed.maxAckPending" . }}
- --max-deliver={{ int .Values.worker.maxDeliver }}
{{- end }}

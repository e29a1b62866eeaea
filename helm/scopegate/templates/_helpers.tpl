{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated to 57 characters, so that suffixed names
("-admin", "-registry", "-data", "-registry-data") still fit in 63.
*/}}
{{- define "scopegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "scopegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "scopegate.labels" -}}
helm.sh/chart: {{ include "scopegate.chart" . }}
{{ include "scopegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scopegate
{{- end }}

{{/*
Selector labels (immutable on the Deployment: never add to them).
*/}}
{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scopegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scopegate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scopegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "scopegate.registryImage" -}}
{{- printf "%s:%s" .Values.registry.image.repository .Values.registry.image.tag }}
{{- end }}

{{/*
"true" when PostgreSQL is configured (database.url or database.existingSecret), else "".
*/}}
{{- define "scopegate.database" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/*
The Secret the chart creates for whatever is not taken from an existing Secret.
*/}}
{{- define "scopegate.secretName" -}}
{{- include "scopegate.fullname" . }}
{{- end }}

{{/*
"true" when the chart's own Secret has something to hold.
*/}}
{{- define "scopegate.ownSecret" -}}
{{- if or (not .Values.adminToken.existingSecret) (and .Values.signingKey.value (not .Values.signingKey.existingSecret)) (and .Values.database.url (not .Values.database.existingSecret)) }}true{{ end }}
{{- end }}

{{/* Secret and key of the admin token, the signing key and the database URL. */}}
{{- define "scopegate.adminTokenSecret" -}}
{{- .Values.adminToken.existingSecret | default (include "scopegate.secretName" .) }}
{{- end }}
{{- define "scopegate.adminTokenKey" -}}
{{- if .Values.adminToken.existingSecret }}{{ .Values.adminToken.existingSecretKey }}{{ else }}admin-token{{ end }}
{{- end }}
{{- define "scopegate.signingKeySecret" -}}
{{- .Values.signingKey.existingSecret | default (include "scopegate.secretName" .) }}
{{- end }}
{{- define "scopegate.signingKeyKey" -}}
{{- if .Values.signingKey.existingSecret }}{{ .Values.signingKey.existingSecretKey }}{{ else }}signing-key.pem{{ end }}
{{- end }}
{{- define "scopegate.databaseSecret" -}}
{{- .Values.database.existingSecret | default (include "scopegate.secretName" .) }}
{{- end }}
{{- define "scopegate.databaseKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/*
Name of the public port: https when scopegate terminates TLS itself.
*/}}
{{- define "scopegate.publicPortName" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The upstream registry URL scopegate forwards to.
*/}}
{{- define "scopegate.upstream" -}}
{{- if eq .Values.mode "sidecar" }}
{{- "http://127.0.0.1:5001" }}
{{- else }}
{{- tpl (required "upstream.url is required in standalone mode: the URL of the registry Service, e.g. http://registry.registry.svc.cluster.local:5000" .Values.upstream.url) . }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: a bit above shutdown_grace_secs unless given.
*/}}
{{- define "scopegate.terminationGrace" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds | int64 }}
{{- else }}
{{- add (.Values.config.shutdownGraceSecs | int64) 15 }}
{{- end }}
{{- end }}

{{/*
storageClassName of a PVC from a persistence block ("-" means "").
*/}}
{{- define "scopegate.storageClass" -}}
{{- if .storageClass }}
{{- if eq "-" .storageClass }}
storageClassName: ""
{{- else }}
storageClassName: {{ .storageClass | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks of combinations the schema cannot express clearly. Renders nothing; fails with a
message that says what to change.
*/}}
{{- define "scopegate.validate" -}}
{{- if not (has .Values.mode (list "sidecar" "standalone")) }}
{{- fail (printf "mode must be sidecar or standalone, not %q" .Values.mode) }}
{{- end }}
{{- $_ := required "publicUrl is required: the origin registry clients use, e.g. https://registry.example.com" .Values.publicUrl }}
{{- if not (regexMatch "^https?://[^/?#@ ]+$" .Values.publicUrl) }}
{{- fail (printf "publicUrl must be an origin (http[s]://host[:port], no path), not %q" .Values.publicUrl) }}
{{- end }}
{{- $replicas := .Values.replicas | int }}
{{- if and (gt $replicas 1) (not (include "scopegate.database" .)) }}
{{- fail (printf "replicas: %d needs PostgreSQL (set database.url or database.existingSecret): the default SQLite store in the data directory allows one replica only" $replicas) }}
{{- end }}
{{- if and (gt $replicas 1) (eq .Values.mode "sidecar") (not .Values.registry.sharedStorage) }}
{{- fail (printf "replicas: %d in sidecar mode gives every replica its own registry: share its storage (a ReadWriteMany claim or object storage via registry.env) and set registry.sharedStorage: true, or use mode: standalone" $replicas) }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.adminToken.value (lt (len .Values.adminToken.value) 16) }}
{{- fail "adminToken.value must be at least 16 characters" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- fail "serviceMonitor.enabled needs the monitoring.coreos.com/v1 API (Prometheus Operator CRDs); install them, or pass --api-versions monitoring.coreos.com/v1 to helm template" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") .Values.networkPolicy.enabled .Values.networkPolicy.registry.enabled (not .Values.networkPolicy.registry.podSelector) }}
{{- fail "networkPolicy.registry.enabled needs networkPolicy.registry.podSelector: the labels of the registry's pods" }}
{{- end }}
{{- end }}

{{/*
Names, labels and the rendered bridge config, shared by every template.
*/}}

{{- define "flashduty-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name, plus the chart name unless the release name already contains it. */}}
{{- define "flashduty-bridge.fullname" -}}
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

{{- define "flashduty-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change across upgrades: selectors and volume claim templates (immutable). */}}
{{- define "flashduty-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flashduty-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "flashduty-bridge.labels" -}}
helm.sh/chart: {{ include "flashduty-bridge.chart" . }}
app.kubernetes.io/name: {{ include "flashduty-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flashduty-bridge
{{- end }}

{{- define "flashduty-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flashduty-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flashduty-bridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "flashduty-bridge.postgresql" -}}
{{- eq .Values.storage.mode "postgresql" | ternary "true" "" }}
{{- end }}

{{- define "flashduty-bridge.replicas" -}}
{{- if include "flashduty-bridge.postgresql" . }}
{{- .Values.replicaCount | default 2 }}
{{- else }}
{{- if and .Values.replicaCount (ne (int .Values.replicaCount) 1) }}
{{- fail "storage.mode sqlite runs exactly one pod (SQLite is one process per file); use storage.mode postgresql for more" }}
{{- end }}
{{- 1 }}
{{- end }}
{{- end }}

{{/* Where the bridge's files are in the pod. */}}
{{- define "flashduty-bridge.paths" -}}
config: /etc/flashduty-bridge
data: /var/lib/flashduty-bridge
secrets: /var/run/secrets/flashduty-bridge
dsn: /var/run/secrets/flashduty-bridge/postgresql-dsn
{{- end }}

{{- define "flashduty-bridge.port" -}}9095{{- end }}

{{/*
The bridge's config file: the values' `config` with the keys the chart owns set
(listen; storage.path in SQLite mode, storage.dsn_file in PostgreSQL mode).
*/}}
{{- define "flashduty-bridge.config" -}}
{{- $paths := include "flashduty-bridge.paths" . | fromYaml }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $storage := deepCopy (get $config "storage" | default dict) }}
{{- if include "flashduty-bridge.postgresql" . }}
{{- $_ := set $storage "dsn_file" $paths.dsn }}
{{- else }}
{{- $_ := set $storage "path" $paths.data }}
{{- end }}
{{- $_ := set $config "storage" $storage }}
{{- $_ := set $config "listen" (printf "0.0.0.0:%s" (include "flashduty-bridge.port" .)) }}
{{- toYaml $config }}
{{- end }}

{{/*
Refuse values the schema cannot explain well, each with a message that says what to do and
never echoes a secret: more than one SQLite pod, PostgreSQL without its Secret, keys of
`config` the chart owns, and literal secrets in `config`.
*/}}
{{- define "flashduty-bridge.validate" -}}
{{- $_ := include "flashduty-bridge.replicas" . }}
{{- if and (include "flashduty-bridge.postgresql" .) (not .Values.storage.postgresql.existingSecret) }}
{{- fail "storage.mode postgresql needs storage.postgresql.existingSecret: the name of the Secret holding the DSN (postgresql://...)" }}
{{- end }}
{{- $config := .Values.config | default dict }}
{{- if hasKey $config "listen" }}
{{- fail (printf "config.listen is set by the chart (the pods listen on port %s; change service.port instead)" (include "flashduty-bridge.port" .)) }}
{{- end }}
{{- range $key := list "path" "dsn" "dsn_file" }}
{{- if hasKey (get $config "storage" | default dict) $key }}
{{- fail (printf "config.storage.%s is set by the chart from storage.mode (sqlite: the volume; postgresql: storage.postgresql.existingSecret)" $key) }}
{{- end }}
{{- end }}
{{- include "flashduty-bridge.noLiteralSecrets" (list "config" $config) }}
{{- end }}

{{/*
Walks the config: a secret key's value may only be empty or one ${VAR}; no string may be a
URL with a password or an integration key in its query.
*/}}
{{- define "flashduty-bridge.noLiteralSecrets" -}}
{{- $path := index . 0 }}
{{- $node := index . 1 }}
{{- if kindIs "map" $node }}
{{- range $key, $value := $node }}
{{- $at := printf "%s.%s" $path $key }}
{{- if has $key (list "integration_key" "token" "password" "secret" "dsn") }}
{{- if not (and (kindIs "string" $value) (regexMatch "^(\\$\\{[A-Za-z_][A-Za-z0-9_]*\\})?$" $value)) }}
{{- fail (printf "%s: a secret does not belong in values (they end up in a ConfigMap). Put it in existingSecret and write ${VAR} with VAR in secretEnv, or use the *_file form with a file under /var/run/secrets/flashduty-bridge/" $at) }}
{{- end }}
{{- else }}
{{- include "flashduty-bridge.noLiteralSecrets" (list $at $value) }}
{{- end }}
{{- end }}
{{- else if kindIs "string" $node }}
{{- if regexMatch "[?&]integration_key=[^$&]" $node }}
{{- fail (printf "%s: a URL with ?integration_key= carries the key into a ConfigMap; use a destination with integration_key_file (a file of existingSecret) instead" $path) }}
{{- end }}
{{- if regexMatch "^[A-Za-z][-+.A-Za-z0-9]*://[^/@]*:[^/@]*@" $node }}
{{- fail (printf "%s: a URL with a password does not belong in values; keep it in a Secret (for the database: storage.postgresql.existingSecret)" $path) }}
{{- end }}
{{- else if kindIs "slice" $node }}
{{- range $index, $value := $node }}
{{- include "flashduty-bridge.noLiteralSecrets" (list (printf "%s[%d]" $path $index) $value) }}
{{- end }}
{{- end }}
{{- end }}

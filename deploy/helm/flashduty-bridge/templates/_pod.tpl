{{/*
The pod template, the same in both storage modes except for the outbox: SQLite mounts the
StatefulSet's claim "data" at the data path; PostgreSQL mounts no volume and reads the DSN
from a Secret file.
*/}}
{{- define "flashduty-bridge.podTemplate" -}}
{{- $paths := include "flashduty-bridge.paths" . | fromYaml }}
{{- $postgresql := include "flashduty-bridge.postgresql" . }}
{{- $secrets := or .Values.existingSecret $postgresql -}}
metadata:
  labels:
    {{- include "flashduty-bridge.labels" . | nindent 4 }}
    app.kubernetes.io/component: server
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A config change changes this checksum and so rolls the pods (see README, "Configuration
    # changes"); the bridge's reload endpoint is for Secret files rotated in place.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "flashduty-bridge.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  # SIGTERM: stop accepting, finish in-flight attempts (up to 15 s), keep the rest queued,
  # exit 0. The HTTP server allows 30 s for open requests.
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $spread := .Values.topologySpreadConstraints }}
  {{- if and $postgresql (not $spread) }}
  {{- $spread = list (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "DoNotSchedule") (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway") }}
  {{- end }}
  {{- with $spread }}
  topologySpreadConstraints:
    {{- range . }}
    {{- $constraint := deepCopy . }}
    {{- if not (hasKey $constraint "labelSelector") }}
    {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "flashduty-bridge.selectorLabels" $ | fromYaml)) }}
    {{- if $postgresql }}
    {{- /* Count only the pods of the same ReplicaSet, so a rolling update is not skewed by the old ones. */}}
    {{- $_ := set $constraint "matchLabelKeys" (list "pod-template-hash") }}
    {{- end }}
    {{- end }}
    - {{ toYaml $constraint | indent 6 | trim }}
    {{- end }}
  {{- end }}
  containers:
    - name: flashduty-bridge
      image: {{ include "flashduty-bridge.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      # The image's ENTRYPOINT and CMD, spelled out: PID 1 is the bridge.
      command: ["flashduty-bridge"]
      args: ["serve", "--config", "{{ $paths.config }}/config.yaml"]
      ports:
        - name: http
          containerPort: {{ include "flashduty-bridge.port" . }}
          protocol: TCP
      env:
        {{- if .Values.existingSecret }}
        {{- range $name, $key := .Values.secretEnv }}
        {{- if $key }}
        - name: {{ $name }}
          valueFrom:
            secretKeyRef:
              name: {{ $.Values.existingSecret }}
              key: {{ $key }}
        {{- end }}
        {{- end }}
        {{- end }}
        - name: PYTHONDONTWRITEBYTECODE
          value: "1"
        - name: PYTHONUNBUFFERED
          value: "1"
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      livenessProbe:
        httpGet:
          path: /-/healthy
          port: http
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 6
      # Ready only when the outbox is open (in PostgreSQL mode: the database answers) and the
      # delivery workers run.
      readinessProbe:
        httpGet:
          path: /-/ready
          port: http
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      startupProbe:
        httpGet:
          path: /-/healthy
          port: http
        periodSeconds: 1
        failureThreshold: 60
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        {{- if not $postgresql }}
        - name: data
          mountPath: {{ $paths.data }}
        {{- end }}
        - name: config
          mountPath: {{ $paths.config }}
          readOnly: true
        {{- if $secrets }}
        - name: secrets
          mountPath: {{ $paths.secrets }}
          readOnly: true
        {{- end }}
        # Scratch space (SQLite's temporary files); the root filesystem is read-only.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "flashduty-bridge.fullname" . }}-config
    {{- if $secrets }}
    # Every key of existingSecret, and the DSN as "postgresql-dsn". A Secret updated in place
    # updates these files; the bridge re-reads *_file keys on reload (SIGHUP, POST /-/reload).
    - name: secrets
      projected:
        defaultMode: 0440
        sources:
          {{- if .Values.existingSecret }}
          - secret:
              name: {{ .Values.existingSecret }}
          {{- end }}
          {{- if $postgresql }}
          - secret:
              name: {{ .Values.storage.postgresql.existingSecret }}
              items:
                - key: {{ .Values.storage.postgresql.secretKey }}
                  path: {{ base $paths.dsn }}
          {{- end }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
{{- end }}

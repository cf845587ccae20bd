{{/*
Secrets reach idemproxy as files under /etc/idemproxy/<use>/ (never in the
ConfigMap, never on the command line), named by the *_FILE variables; the
Redis URL, which may hold a password, as a variable from its Secret. Each
entry: use, secret name, key, and the variable that names the file.
*/}}
{{- define "idemproxy.secretFiles" -}}
{{- $files := list }}
{{- if .Values.auth.enabled }}
{{- $files = append $files (dict "use" "auth" "secret" (include "idemproxy.authSecret" .) "key" .Values.auth.key "env" "IDEMPROXY_AUTH_TOKEN_FILE") }}
{{- end }}
{{- with .Values.adminToken.existingSecret }}
{{- $files = append $files (dict "use" "admin-token" "secret" . "key" $.Values.adminToken.key "env" "IDEMPROXY_ADMIN_TOKEN_FILE") }}
{{- end }}
{{- with .Values.encryption.existingSecret }}
{{- $files = append $files (dict "use" "encryption" "secret" . "key" $.Values.encryption.key "env" "IDEMPROXY_ENCRYPTION_KEYS_FILE") }}
{{- end }}
{{- with .Values.redis.caSecret.name }}
{{- $files = append $files (dict "use" "redis-ca" "secret" . "key" $.Values.redis.caSecret.key "env" "IDEMPROXY_REDIS_CA") }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $files = append $files (dict "use" "tls" "secret" (required "tls.secretName is required with tls.enabled" .Values.tls.secretName) "key" "tls.crt" "env" "IDEMPROXY_TLS_CERT") }}
{{- with .Values.tls.clientCASecret.name }}
{{- $files = append $files (dict "use" "tls-client-ca" "secret" . "key" $.Values.tls.clientCASecret.key "env" "IDEMPROXY_TLS_CLIENT_CA") }}
{{- end }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{- define "idemproxy.secretEnv" -}}
{{- $files := include "idemproxy.secretFiles" . | fromJsonArray }}
env:
{{- with .Values.goRuntime }}
{{- with .gogc }}
- name: GOGC
  value: {{ . | quote }}
{{- end }}
{{- with .gomemlimit }}
- name: GOMEMLIMIT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.redis.urlSecret.name }}
- name: IDEMPROXY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.redis.urlSecret.key }}
{{- end }}
{{- range $files }}
- name: {{ .env }}
  value: /etc/idemproxy/{{ .use }}/{{ .key }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: IDEMPROXY_TLS_KEY
  value: /etc/idemproxy/tls/tls.key
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "idemproxy.secretMounts" -}}
{{- $files := include "idemproxy.secretFiles" . | fromJsonArray }}
{{- if $files }}
volumeMounts:
{{- range $files }}
- name: {{ .use }}
  mountPath: /etc/idemproxy/{{ .use }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "idemproxy.secretVolumes" -}}
{{- $files := include "idemproxy.secretFiles" . | fromJsonArray }}
{{- if $files }}
volumes:
{{- range $files }}
- name: {{ .use }}
  secret:
    secretName: {{ .secret }}
    # Readable by the pod's non-root user without an fsGroup (the
    # container runs nothing else).
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end }}

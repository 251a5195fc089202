{{/* The chart's name. */}}
{{- define "bankmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's object-name prefix. */}}
{{- define "bankmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "bankmesh.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "bankmesh.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Object name of one component: <fullname>-<component>. Call with (dict "root" $ "svc" "identity"). */}}
{{- define "bankmesh.componentName" -}}
{{- printf "%s-%s" (include "bankmesh.fullname" .root) .svc | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "bankmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bankmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bankmesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the whole release. */}}
{{- define "bankmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bankmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component. Call with (dict "root" $ "svc" "identity"). */}}
{{- define "bankmesh.componentSelectorLabels" -}}
{{ include "bankmesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "bankmesh.componentLabels" -}}
{{ include "bankmesh.labels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* The image reference: a digest wins over a tag; the tag defaults to the chart's appVersion. */}}
{{- define "bankmesh.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "bankmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bankmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The gRPC services (the gateway is the HTTP edge). */}}
{{- define "bankmesh.grpcServices" -}}
[identity, accounts, ledger, cards, notifications]
{{- end -}}

{{/*
Who calls whom (gRPC), from the code: every service verifies tokens against identity (JWKS, token
status) and fetches service tokens there; accounts calls the ledger (sagas, statements); cards calls
the ledger (holds) and accounts (the account a card is issued on, with the owner's token);
notifications calls the ledger (low-balance thresholds); the gateway calls every service. NetworkPolicies
are generated from this one table.
*/}}
{{- define "bankmesh.callees" -}}
identity: []
accounts: [identity, ledger]
ledger: [identity]
cards: [identity, accounts, ledger]
notifications: [identity, ledger]
gateway: [identity, accounts, ledger, cards, notifications]
{{- end -}}

{{/*
The secret files each component reads (file name = key in its existingSecret -> the BANK_*_FILE
setting that names it, and whether the key may be absent). Names are the settings in the code.
*/}}
{{- define "bankmesh.secretFiles" -}}
identity:
  - {key: database-url, env: BANK_DATABASE__URL_FILE, optional: false}
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: kek, env: BANK_KEYS__KEK_FILE, optional: false}
  - {key: service-clients, env: BANK_BOOTSTRAP__SERVICE_CLIENTS_FILE, optional: false}
  - {key: bootstrap-admin, env: BANK_BOOTSTRAP__ADMIN_FILE, optional: true}
accounts:
  - {key: database-url, env: BANK_DATABASE__URL_FILE, optional: false}
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: client-secret, env: BANK_AUTH__CLIENT_SECRET_FILE, optional: false}
ledger:
  - {key: database-url, env: BANK_DATABASE__URL_FILE, optional: false}
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: client-secret, env: BANK_AUTH__CLIENT_SECRET_FILE, optional: false}
cards:
  - {key: database-url, env: BANK_DATABASE__URL_FILE, optional: false}
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: client-secret, env: BANK_AUTH__CLIENT_SECRET_FILE, optional: false}
  - {key: vault-keks, env: BANK_VAULT__KEKS_FILE, optional: false}
notifications:
  - {key: database-url, env: BANK_DATABASE__URL_FILE, optional: false}
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: client-secret, env: BANK_AUTH__CLIENT_SECRET_FILE, optional: false}
  - {key: smtp-password, env: BANK_EMAIL__SMTP_PASSWORD_FILE, optional: true}
gateway:
  - {key: redis-url, env: BANK_REDIS__URL_FILE, optional: false}
  - {key: client-secret, env: BANK_AUTH__CLIENT_SECRET_FILE, optional: false}
{{- end -}}

{{/* The gRPC URL of a component inside the cluster. Call with (dict "root" $ "svc" "ledger"). */}}
{{- define "bankmesh.grpcUrl" -}}
{{- printf "http://%s:%v" (include "bankmesh.componentName" .) .root.Values.ports.grpc -}}
{{- end -}}

{{/*
The settings the chart derives for a component (listeners, drain timing, telemetry, where the other
services are); .Values.config and the component's own config are merged over them.
*/}}
{{- define "bankmesh.derivedConfig" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $v := $root.Values -}}
{{- $listen := ternary $v.ports.http $v.ports.grpc (eq $svc "gateway") -}}
server:
  listen_addr: {{ printf "0.0.0.0:%v" $listen | quote }}
  admin_addr: {{ printf "0.0.0.0:%v" $v.ports.admin | quote }}
  shutdown_delay: {{ printf "%vs" $v.shutdown.delaySeconds | quote }}
  shutdown_grace: {{ printf "%vs" $v.shutdown.graceSeconds | quote }}
telemetry:
  log_format: json
  log_filter: {{ $v.telemetry.logFilter | quote }}
  {{- with $v.telemetry.otlpEndpoint }}
  otlp_endpoint: {{ . | quote }}
  {{- end }}
{{- if ne $svc "gateway" }}
redis:
  key_prefix: {{ printf "bank:%s:" $svc | quote }}
{{- else }}
redis:
  key_prefix: "bank:gateway:"
{{- end }}
{{- if ne $svc "identity" }}
auth:
  identity_url: {{ include "bankmesh.grpcUrl" (dict "root" $root "svc" "identity") | quote }}
  client_id: {{ $svc | quote }}
{{- end }}
{{- if or (eq $svc "accounts") (eq $svc "cards") (eq $svc "notifications") }}
ledger_url: {{ include "bankmesh.grpcUrl" (dict "root" $root "svc" "ledger") | quote }}
{{- end }}
{{- if eq $svc "notifications" }}
consumer:
  {{- /* The producing services' streams: <their redis.key_prefix>events (see redis above). */}}
  streams: ["bank:identity:events", "bank:accounts:events", "bank:ledger:events", "bank:cards:events"]
{{- end }}
{{- if eq $svc "cards" }}
accounts_url: {{ include "bankmesh.grpcUrl" (dict "root" $root "svc" "accounts") | quote }}
{{- end }}
{{- if eq $svc "gateway" }}
upstreams:
  {{- $ready := list }}
  {{- range $up := (include "bankmesh.grpcServices" $root | fromYamlArray) }}
  {{ $up }}: {{ include "bankmesh.grpcUrl" (dict "root" $root "svc" $up) | quote }}
  {{- if (index $v.services $up).enabled }}{{ $ready = append $ready $up }}{{ end }}
  {{- end }}
  required_for_readiness: {{ toJson $ready }}
{{- end }}
{{- end -}}

{{/* The merged settings of a component, as a dict. */}}
{{- define "bankmesh.config" -}}
{{- $derived := include "bankmesh.derivedConfig" . | fromYaml -}}
{{- $common := deepCopy (.root.Values.config | default dict) -}}
{{- $own := deepCopy ((index .root.Values.services .svc).config | default dict) -}}
{{- toYaml (mergeOverwrite $derived $common $own) -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: preStop sleep + shutdown_delay + shutdown_grace + margin. */}}
{{- define "bankmesh.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown -}}
{{- add $s.preStopSleepSeconds $s.delaySeconds $s.graceSeconds $s.marginSeconds -}}
{{- end -}}

{{/* "key1, key2, [optional]" for error messages. */}}
{{- define "bankmesh.secretKeysText" -}}
{{- $keys := list -}}
{{- range . -}}{{- $keys = append $keys (ternary (printf "[%s]" .key) .key .optional) -}}{{- end -}}
{{- join ", " $keys -}}
{{- end -}}

{{/* The Secret a component reads its secret files from: services.<svc>.existingSecret, by default
<fullname>-<svc>. The chart never creates it and never holds a secret value. */}}
{{- define "bankmesh.secretName" -}}
{{- default (include "bankmesh.componentName" .) (index .root.Values.services .svc).existingSecret -}}
{{- end -}}

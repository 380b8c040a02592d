{{/* Chart name, possibly overridden. */}}
{{- define "kube-drac.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every object: <release>-kube-drac, or the release name if it contains the chart name. */}}
{{- define "kube-drac.fullname" -}}
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

{{- define "kube-drac.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kube-drac.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kube-drac
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one role's objects. Call with (dict "ctx" $ "role" "pop3"). */}}
{{- define "kube-drac.roleLabels" -}}
{{ include "kube-drac.labels" .ctx }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "kube-drac.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-drac.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "kube-drac.roleName" -}}
{{ include "kube-drac.fullname" .ctx }}-{{ .role }}
{{- end -}}

{{- define "kube-drac.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "kube-drac.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{ .Values.tls.existingSecret }}
{{- else -}}
{{ include "kube-drac.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{- define "kube-drac.usersSecret" -}}
{{- if .Values.users.existingSecret -}}
{{ .Values.users.existingSecret }}
{{- else -}}
{{ include "kube-drac.fullname" . }}-users
{{- end -}}
{{- end -}}

{{- define "kube-drac.mailClaim" -}}
{{- if .Values.persistence.existingClaim -}}
{{ .Values.persistence.existingClaim }}
{{- else -}}
{{ include "kube-drac.fullname" . }}-mail
{{- end -}}
{{- end -}}

{{- define "kube-drac.leaseName" -}}
{{ include "kube-drac.fullname" . }}-operator
{{- end -}}

{{/*
Settings that cannot work together, refused at render time with what to do. The schema checks
each value alone; these checks need two or more.
*/}}
{{- define "kube-drac.validate" -}}
{{- $errors := list -}}
{{- if and (or .Values.pop3.enabled .Values.smtp.enabled) (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- $errors = append $errors "TLS is required (POP3 refuses passwords before TLS): set tls.existingSecret to a kubernetes.io/tls Secret, or tls.certManager.enabled=true with tls.certManager.issuerRef.name and tls.certManager.dnsNames" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled .Values.tls.existingSecret -}}
{{- $errors = append $errors "tls.existingSecret and tls.certManager.enabled are exclusive: the certificate comes from one of them" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (or (not .Values.tls.certManager.issuerRef.name) (not .Values.tls.certManager.dnsNames)) -}}
{{- $errors = append $errors "tls.certManager.enabled needs tls.certManager.issuerRef.name and at least one tls.certManager.dnsNames entry" -}}
{{- end -}}
{{- if and .Values.smtp.enabled (not .Values.smtp.smarthost.host) -}}
{{- $errors = append $errors "smtp.smarthost.host is required: the host relayed mail is sent to (e.g. smtp.example.org)" -}}
{{- end -}}
{{- if and .Values.smtp.smarthost.auth.enabled (or (not .Values.smtp.smarthost.auth.user) (not .Values.smtp.smarthost.auth.existingSecret)) -}}
{{- $errors = append $errors "smtp.smarthost.auth.enabled needs smtp.smarthost.auth.user and smtp.smarthost.auth.existingSecret (a Secret holding the password)" -}}
{{- end -}}
{{- if and .Values.smtp.smarthost.auth.enabled (not .Values.smtp.smarthost.secure) (not .Values.smtp.smarthost.requireTLS) -}}
{{- $errors = append $errors "smtp.smarthost.auth.enabled sends a password: set smtp.smarthost.secure=true or smtp.smarthost.requireTLS=true" -}}
{{- end -}}
{{- if and .Values.smtp.smarthost.secure .Values.smtp.smarthost.requireTLS -}}
{{- $errors = append $errors "smtp.smarthost.secure (TLS from the first byte) and smtp.smarthost.requireTLS (STARTTLS) are exclusive: set one of them" -}}
{{- end -}}
{{- if and .Values.proxyProtocol.enabled (not .Values.proxyProtocol.trustedCIDRs) -}}
{{- $errors = append $errors "proxyProtocol.enabled needs proxyProtocol.trustedCIDRs: the addresses your load balancer connects from (PROXY headers from anyone else are refused)" -}}
{{- end -}}
{{- if and (ne .Values.service.type "ClusterIP") (eq .Values.service.externalTrafficPolicy "Cluster") (not .Values.proxyProtocol.enabled) -}}
{{- $errors = append $errors "service.externalTrafficPolicy=Cluster hides client addresses behind node addresses: one POP3 login would open the relay to everybody. Keep Local, or set proxyProtocol.enabled=true with proxyProtocol.trustedCIDRs" -}}
{{- end -}}
{{- if and (or .Values.pop3.enabled .Values.smtp.enabled) .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- $errors = append $errors "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled both scrape every pod: enable one of them" -}}
{{- end -}}
{{- $b := .Values.bridge -}}
{{- if $b.enabled -}}
{{- if not (or $b.socketmap.enabled $b.policy.enabled $b.whoson.enabled $b.drac.enabled $b.authPolicy.enabled) -}}
{{- $errors = append $errors "bridge.enabled needs at least one protocol: set bridge.socketmap.enabled, bridge.policy.enabled, bridge.whoson.enabled, bridge.drac.enabled or bridge.authPolicy.enabled" -}}
{{- end -}}
{{- if not $b.allow -}}
{{- $errors = append $errors "bridge.enabled needs bridge.allow: the networks your MTAs and login servers connect from (e.g. the pod network 10.244.0.0/16); everyone else is refused" -}}
{{- end -}}
{{- if and $b.authPolicy.enabled (not $b.authPolicy.existingSecret) -}}
{{- $errors = append $errors "bridge.authPolicy.enabled needs bridge.authPolicy.existingSecret: a Secret holding the API key Dovecot sends (auth_policy_server_api_header), at least 16 characters" -}}
{{- end -}}
{{- range $b.drac.allowLines -}}
{{- if regexMatch "^\\s*0+\\.0+\\.0+\\.0+\\s" . -}}
{{- $errors = append $errors (printf "bridge.drac.allowLines contains %q, whose netmask 0.0.0.0 admits every address: anyone could grant themselves relaying. List only your login servers" .) -}}
{{- end -}}
{{- end -}}
{{- $seen := dict (printf "TCP/%d" (int .Values.metrics.port)) "metrics.port" -}}
{{- range (include "kube-drac.bridgePorts" . | fromJson).ports -}}
{{- $id := printf "%s/%d" .protocol (int .containerPort) -}}
{{- if hasKey $seen $id -}}
{{- $errors = append $errors (printf "bridge port %d (%s, %s) is also used by %s: give each protocol its own port" (int .containerPort) .name .protocol (get $seen $id)) -}}
{{- else -}}
{{- $_ := set $seen $id .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key, $list := dict "smtp.trustedNetworks" .Values.smtp.trustedNetworks "proxyProtocol.trustedCIDRs" .Values.proxyProtocol.trustedCIDRs "bridge.allow" .Values.bridge.allow -}}
{{- range $list -}}
{{- if regexMatch "/0+$" . -}}
{{- $errors = append $errors (printf "%s contains %s, which is every address on the Internet: %s. List only your own networks" $key . (ternary "anyone could grant themselves relaying through the bridge" "the SMTP server would be an open relay" (eq $key "bridge.allow"))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if or (hasPrefix "/" .Values.mail.location) (regexMatch "(^|/)\\.\\.(/|$)" .Values.mail.location) -}}
{{- $errors = append $errors (printf "mail.location %q must be a path relative to the mail volume without .. (e.g. %%d/%%n/Maildir)" .Values.mail.location) -}}
{{- end -}}
{{- $kube := .Capabilities.KubeVersion.Version -}}
{{- if and (not (hasPrefix "v0.0.0" $kube)) (semverCompare "<1.31.0-0" $kube) -}}
{{- $errors = append $errors (printf "Kubernetes %s is too old: the RelayGrant CRD's validation rules need 1.31 or later" $kube) -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nkube-drac cannot be installed with these values:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}

{{/* The pod securityContext and the container parts shared by every role. */}}
{{- define "kube-drac.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "kube-drac.roleName" . }}
automountServiceAccountToken: true
enableServiceLinks: false
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
# By default replicas prefer different nodes: one node going away leaves the role running.
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "kube-drac.selectorLabels" . | nindent 14 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "kube-drac.containerCommon" -}}
image: {{ include "kube-drac.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
args: [{{ .role | quote }}, "--config", "/etc/kube-drac/config/{{ .role }}.yaml"]
env:
  - name: POD_NAMESPACE
    valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  - name: POD_NAME
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  {{- with .values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
securityContext:
  {{- toYaml .ctx.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .values.resources | nindent 2 }}
{{- if and (has .role (list "pop3" "smtp" "bridge")) .ctx.Values.drainSeconds }}
# Keep serving while the endpoint is withdrawn: new connections stop arriving before the listeners close.
lifecycle:
  preStop:
    sleep: {seconds: {{ int .ctx.Values.drainSeconds }}}
{{- end }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* Pod template annotations: restart when the role's config changes. */}}
{{- define "kube-drac.podAnnotations" -}}
checksum/config: {{ include (printf "kube-drac.config.%s" .role) .ctx | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The bridge's ports, one entry per enabled protocol and transport: name, container port,
Service port. The DRAC program keeps one number everywhere, because the portmapper hands it
out as is; only the portmapper maps its Service port (111) onto a non-root container port.
*/}}
{{- define "kube-drac.bridgePorts" -}}
{{- $b := .Values.bridge -}}
{{- $ports := list -}}
{{- if $b.socketmap.enabled }}{{ $ports = append $ports (dict "name" "socketmap" "containerPort" (int $b.socketmap.port) "port" (int $b.socketmap.port) "protocol" "TCP") }}{{ end }}
{{- if $b.policy.enabled }}{{ $ports = append $ports (dict "name" "policy" "containerPort" (int $b.policy.port) "port" (int $b.policy.port) "protocol" "TCP") }}{{ end }}
{{- if $b.whoson.enabled }}
{{- $ports = append $ports (dict "name" "whoson" "containerPort" (int $b.whoson.port) "port" (int $b.whoson.port) "protocol" "TCP") }}
{{- if $b.whoson.udp }}{{ $ports = append $ports (dict "name" "whoson-udp" "containerPort" (int $b.whoson.port) "port" (int $b.whoson.port) "protocol" "UDP") }}{{ end }}
{{- end }}
{{- if $b.drac.enabled }}
{{- $ports = append $ports (dict "name" "drac" "containerPort" (int $b.drac.port) "port" (int $b.drac.port) "protocol" "TCP") }}
{{- $ports = append $ports (dict "name" "drac-udp" "containerPort" (int $b.drac.port) "port" (int $b.drac.port) "protocol" "UDP") }}
{{- if $b.drac.portmapper.enabled }}
{{- $ports = append $ports (dict "name" "portmap" "containerPort" 1111 "port" (int $b.drac.portmapper.port) "protocol" "TCP") }}
{{- $ports = append $ports (dict "name" "portmap-udp" "containerPort" 1111 "port" (int $b.drac.portmapper.port) "protocol" "UDP") }}
{{- end }}
{{- end }}
{{- if $b.authPolicy.enabled }}{{ $ports = append $ports (dict "name" "auth-policy" "containerPort" (int $b.authPolicy.port) "port" (int $b.authPolicy.port) "protocol" "TCP") }}{{ end }}
{{- toJson (dict "ports" $ports) -}}
{{- end -}}

{{- define "kube-drac.bridgeContainerPorts" -}}
{{- range (include "kube-drac.bridgePorts" . | fromJson).ports }}
- {name: {{ .name }}, containerPort: {{ int .containerPort }}, protocol: {{ .protocol }}}
{{- end }}
{{- end -}}
